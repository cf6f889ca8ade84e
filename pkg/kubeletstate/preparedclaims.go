package kubeletstate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// PreparedClaims reads the DRA driver's record of prepared claims sample
// after sample, parsing it only when the driver replaced it.
type PreparedClaims = CachedFile[contract.PreparedClaims]

// NewPreparedClaims returns a reader of the record at path. Its Claims is
// never nil once read.
func NewPreparedClaims(path string) *PreparedClaims {
	return NewCachedFile(path, "DRA driver's prepared claims", func(b []byte) (contract.PreparedClaims, error) {
		r, err := contract.ParsePreparedClaims(b)
		if err == nil && r.Claims == nil {
			r.Claims = map[string]contract.PreparedClaim{}
		}
		return r, err
	})
}

// ClaimedGPUsReader returns a function telling which GPUs the DRA
// driver's prepared claims (its record at path) hold a share of, safe for
// concurrent use; a record that does not exist holds none. It reads them
// as node.Holdings (ClaimedGPUs), by the rules every tier shares. The
// device plugin withholds those GPUs' slices.
func ClaimedGPUsReader(path string) func() (map[string]bool, error) {
	var mu sync.Mutex
	r := NewPreparedClaims(path)
	return func() (map[string]bool, error) {
		mu.Lock()
		defer mu.Unlock()
		record, err := r.Read()
		if errors.Is(err, fs.ErrNotExist) {
			return map[string]bool{}, nil
		}
		if err != nil {
			return nil, err
		}
		return node.HoldingsOf(node.Sources{DRA: true, Prepared: record.Claims}).ClaimedGPUs(), nil
	}
}

// RecentGrants are the GPUs the device plugin handed out slices of that
// pod-resources may not list yet; *frontend.Guard is one.
type RecentGrants interface {
	Pending() (map[string]bool, error)
}

// SlicedGPUsReader returns a function telling which GPUs device-plugin
// slices of resource are on: those the kubelet's active pods hold
// (pod-resources) and those recent grants name (nil for none), read as
// node.Holdings (SlicedGPUs). The DRA driver refuses claims on them, and
// every claim while either cannot be read. The device manager's
// checkpoint is not used: the kubelet keeps a deleted pod's entry there
// until another device-plugin allocation, so a GPU that once served a
// slice pod would refuse claims for good (TestDRAClaimAfterAVGPUPod).
func SlicedGPUsReader(pods Lister, recent RecentGrants, resource string, layout *vgpu.Layout) func() (map[string]bool, error) {
	return func() (map[string]bool, error) {
		as, err := pods.List(context.Background())
		if err != nil {
			return nil, fmt.Errorf("which GPUs device-plugin pods hold: %w", err)
		}
		var pending map[string]bool
		if recent != nil {
			if pending, err = recent.Pending(); err != nil {
				return nil, fmt.Errorf("the device plugin's recent grants: %w", err)
			}
		}
		return node.HoldingsOf(node.Sources{Assignments: as, Pending: pending, ResourceName: resource, Layout: layout}).SlicedGPUs(), nil
	}
}
