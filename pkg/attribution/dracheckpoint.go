package attribution

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"sort"
	"sync"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// DRACheckpointFile is the kubelet DRA manager's checkpoint, in the
// kubelet's root directory. It records which pod UIDs hold which prepared
// claims, the link pod-resources does not give: pod-resources names pods,
// the cgroups of their processes name pod UIDs.
const DRACheckpointFile = "dra_manager_state"

// DRA checkpoint format: one version from Kubernetes 1.31 to 1.37.
const (
	draCheckpointKind       = "DRACheckpoint"
	draCheckpointAPIVersion = "checkpoint.dra.kubelet.k8s.io/v1"
)

// DRAClaim is one claim of gpuslice's DRA driver the kubelet prepared, and
// the pods that hold it.
type DRAClaim struct {
	UID, Namespace, Name string
	// PodUIDs are sorted.
	PodUIDs []string
}

// ErrBadDRACheckpoint reports a DRA checkpoint that cannot be trusted.
var ErrBadDRACheckpoint = errors.New("bad kubelet DRA checkpoint")

// ParseDRACheckpoint reads the kubelet's DRA checkpoint: its checksum must
// match, its kind and version must be the ones known, and every claim must
// name its UID. It returns the claims of driver, never nil.
func ParseDRACheckpoint(data []byte, driver string) ([]DRAClaim, error) {
	var cp struct {
		Data     *string
		Checksum uint32
	}
	if err := json.Unmarshal(data, &cp); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadDRACheckpoint, err)
	}
	if cp.Data == nil {
		return nil, fmt.Errorf("%w: no data", ErrBadDRACheckpoint)
	}
	if sum := crc32.ChecksumIEEE([]byte(*cp.Data)); sum != cp.Checksum {
		return nil, fmt.Errorf("%w: checksum %d, data sums to %d", ErrBadDRACheckpoint, cp.Checksum, sum)
	}
	var d struct {
		Kind               string `json:"kind"`
		APIVersion         string `json:"apiVersion"`
		ClaimInfoStateList []struct {
			ClaimUID    string
			ClaimName   string
			Namespace   string
			PodUIDs     map[string]struct{}
			DriverState map[string]json.RawMessage
		}
	}
	if err := json.Unmarshal([]byte(*cp.Data), &d); err != nil {
		return nil, fmt.Errorf("%w: data: %w", ErrBadDRACheckpoint, err)
	}
	if d.Kind != draCheckpointKind || d.APIVersion != draCheckpointAPIVersion {
		return nil, fmt.Errorf("%w: kind %q version %q, want %q %q", ErrBadDRACheckpoint, d.Kind, d.APIVersion, draCheckpointKind, draCheckpointAPIVersion)
	}
	out := []DRAClaim{}
	for i, c := range d.ClaimInfoStateList {
		if c.ClaimUID == "" {
			return nil, fmt.Errorf("%w: claim %d has no UID", ErrBadDRACheckpoint, i)
		}
		if _, ok := c.DriverState[driver]; !ok {
			continue
		}
		pods := make([]string, 0, len(c.PodUIDs))
		for uid := range c.PodUIDs {
			pods = append(pods, uid)
		}
		sort.Strings(pods)
		out = append(out, DRAClaim{UID: c.ClaimUID, Namespace: c.Namespace, Name: c.ClaimName, PodUIDs: pods})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out, nil
}

// DRACheckpoint reads the kubelet's DRA checkpoint sample after sample,
// parsing it only when the kubelet replaced it.
type DRACheckpoint = CachedFile[[]DRAClaim]

// NewDRACheckpoint returns a reader of the DRA checkpoint in the kubelet's
// root directory, for gpuslice's driver.
func NewDRACheckpoint(kubeletDir string) *DRACheckpoint {
	return NewCachedFile(kubeletDir+"/"+DRACheckpointFile, "kubelet DRA checkpoint", func(b []byte) ([]DRAClaim, error) {
		return ParseDRACheckpoint(b, contract.DRADriverName)
	})
}

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
// concurrent use; a record that does not exist holds none. The device
// plugin refuses those GPUs' slices.
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
		out := map[string]bool{}
		for _, c := range record.Claims {
			shares, _ := ClaimGPUs(c)
			for gpu := range shares {
				out[gpu] = true
			}
		}
		return out, nil
	}
}
