package dra

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Prepared is what the node remembers of a prepared claim: its namespace
// and name, and what it holds of each GPU (the record's own type).
type Prepared = contract.PreparedClaim

// PreparerOptions configure a Preparer.
type PreparerOptions struct {
	// Pool is this node's pool: results in other pools are not its own.
	Pool string
	// Layout is how the node's GPUs are cut.
	Layout *vgpu.Layout
	// MIG are the MIG instances the driver publishes (with
	// --mig-strategy=dra), by device name.
	MIG MIGInstances
	// Nodes are the device nodes containers get.
	Nodes Nodes
	// CDIDir is where claims' CDI specs are written (a directory the
	// runtime reads, e.g. /var/run/cdi).
	CDIDir string
	// StatePath is the file that records prepared claims across restarts
	// (contract.DRAPreparedClaims); the agent reads it.
	StatePath string
	// DevicePluginGPUs, when set, are the GPUs device-plugin slices are on
	// (kubeletstate.SlicedGPUsReader: pod-resources and the device
	// plugin's recent grants). A claim on one of them is refused, and so
	// is every claim while it fails: the two front ends never share a GPU.
	DevicePluginGPUs func() (map[string]bool, error)
	// FrontEnds, when set, is the node's front-end lock, held across the
	// check of the device plugin's GPUs and the record of the claim.
	FrontEnds FrontEnds
}

// FrontEnds is the node's lock shared by its two GPU front ends
// (*frontend.Guard).
type FrontEnds interface {
	Hold() (release func(), err error)
}

// Preparer prepares and unprepares claims on one node: what the kubelet
// plugin's calls do, without the gRPC. Both calls are idempotent, and the
// record on disk (written before a Prepare returns) lets a restarted
// agent know what is prepared, so a claim prepared before a restart still
// counts against its GPUs and can still be unprepared.
type Preparer struct {
	o      PreparerOptions
	mu     sync.Mutex
	ledger *Ledger
	state  map[types.UID]Prepared
	// unhealthy is why each unhealthy GPU is, by UUID.
	unhealthy map[string]string
}

// ErrUnhealthyGPU reports a new claim on a GPU that is unhealthy (an XID,
// lost from the bus): the device plugin refuses such slices at Allocate,
// and so does Prepare.
var ErrUnhealthyGPU = errors.New("gpu is unhealthy")

// SetHealth records a GPU's health: reason says why it is unhealthy, ""
// that it is healthy. New claims on an unhealthy GPU are refused; claims
// already prepared stay prepared (their pods run on, and a kubelet that
// restarts prepares them again).
func (p *Preparer) SetHealth(uuid, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if reason == "" {
		delete(p.unhealthy, uuid)
		return
	}
	p.unhealthy[uuid] = reason
}

// NewPreparer loads the record of prepared claims (none when the file
// does not exist) and admits them to the ledger. A record that cannot be
// read, or that overcommits a GPU, is an error: starting without it could
// hand a GPU out twice.
func NewPreparer(o PreparerOptions) (*Preparer, error) {
	p := &Preparer{o: o, ledger: NewLedger(), state: map[types.UID]Prepared{}, unhealthy: map[string]string{}}
	data, err := os.ReadFile(o.StatePath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return p, nil
	case err != nil:
		return nil, fmt.Errorf("read prepared claims: %w", err)
	}
	record, err := contract.ParsePreparedClaims(data)
	if err != nil {
		return nil, fmt.Errorf("prepared claims record %s: %w", o.StatePath, err)
	}
	for uid, c := range record.Claims {
		if err := p.ledger.Admit(types.UID(uid), c.Grants); err != nil {
			return nil, fmt.Errorf("prepared claims record %s: claim %s/%s: %w", o.StatePath, c.Namespace, c.Name, err)
		}
		p.state[types.UID(uid)] = c
	}
	return p, nil
}

// Prepare makes a claim ready for its containers and returns its CDI
// device ID. A claim already prepared is prepared again (its spec
// rewritten), with the same answer. Nothing of a claim that fails is
// left behind: no spec, no record, nothing held in the ledger.
func (p *Preparer) Prepare(claim *resourceapi.ResourceClaim) (string, error) {
	grants, err := Grants(claim, p.o.Pool, p.o.Layout, p.o.MIG)
	if err != nil {
		return "", err
	}
	spec, err := CDISpec(claim.UID, grants, p.o.Nodes)
	if err != nil {
		return "", fmt.Errorf("claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	if p.o.FrontEnds != nil {
		release, err := p.o.FrontEnds.Hold()
		if err != nil {
			return "", fmt.Errorf("claim %s/%s: %w: %w", claim.Namespace, claim.Name, ErrHeldByDevicePlugin, err)
		}
		defer release() // past the record: an Allocate after it sees the claim
	}
	if err := p.besideDevicePlugin(grants); err != nil {
		return "", fmt.Errorf("claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	before, had := p.state[claim.UID]
	if !had {
		for _, g := range grants {
			why, bad := p.unhealthy[g.UUID]
			if !bad && g.Parent != "" {
				why, bad = p.unhealthy[g.Parent] // a MIG instance: its GPU's health
			}
			if bad {
				return "", fmt.Errorf("claim %s/%s: %w: GPU %d (%s): %s", claim.Namespace, claim.Name, ErrUnhealthyGPU, g.Index, g.UUID, why)
			}
		}
	}
	if err := p.ledger.Admit(claim.UID, grants); err != nil {
		return "", fmt.Errorf("claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	p.state[claim.UID] = Prepared{Namespace: claim.Namespace, Name: claim.Name, Grants: grants}
	err = WriteCDISpec(p.o.CDIDir, claim.UID, spec)
	if err == nil {
		err = p.save()
	}
	if err != nil {
		if had {
			p.state[claim.UID] = before
			_ = p.ledger.Admit(claim.UID, before.Grants) // it held them before
		} else {
			delete(p.state, claim.UID)
			p.ledger.Release(claim.UID)
			_ = RemoveCDISpec(p.o.CDIDir, claim.UID)
		}
		return "", fmt.Errorf("claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	return CDIDeviceID(claim.UID), nil
}

// besideDevicePlugin refuses grants on a GPU the device plugin hands out,
// or any grant when that cannot be told.
func (p *Preparer) besideDevicePlugin(grants []Grant) error {
	if p.o.DevicePluginGPUs == nil {
		return nil
	}
	held, err := p.o.DevicePluginGPUs()
	if err != nil {
		return fmt.Errorf("%w: which GPUs the device plugin holds cannot be told: %w", ErrHeldByDevicePlugin, err)
	}
	for _, g := range grants {
		if held[g.UUID] && !g.Admin {
			return fmt.Errorf("%w: GPU %d (%s) has nvidia.com/vgpu containers; it takes claims once they end", ErrHeldByDevicePlugin, g.Index, g.UUID)
		}
	}
	return nil
}

// Unprepare undoes Prepare: the claim's spec goes, and its GPUs are free
// once the record says so. A claim not prepared is no error.
func (p *Preparer) Unprepare(uid types.UID) error {
	if err := RemoveCDISpec(p.o.CDIDir, uid); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.state[uid]
	if !ok {
		return nil
	}
	delete(p.state, uid)
	if err := p.save(); err != nil {
		p.state[uid] = c // still recorded on disk: still held
		return err
	}
	p.ledger.Release(uid)
	return nil
}

// Claim returns what the prepared claim with the given UID holds, and
// false when it is not prepared.
func (p *Preparer) Claim(uid types.UID) (Prepared, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.state[uid]
	return c, ok
}

// Claims returns the prepared claims by UID.
func (p *Preparer) Claims() map[types.UID]Prepared {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[types.UID]Prepared, len(p.state))
	for k, v := range p.state {
		out[k] = v
	}
	return out
}

// save writes the record atomically: a temporary file, synced, renamed
// over the old one.
func (p *Preparer) save() error {
	record := contract.PreparedClaims{Version: contract.PreparedClaimsVersion, Claims: make(map[string]contract.PreparedClaim, len(p.state))}
	for uid, c := range p.state {
		record.Claims[string(uid)] = c
	}
	data, err := json.Marshal(record)
	if err != nil {
		return fmt.Errorf("encode prepared claims: %w", err)
	}
	if err := writeAtomic(p.o.StatePath, data); err != nil {
		return fmt.Errorf("record prepared claims: %w", err)
	}
	return nil
}

// writeAtomic replaces path with data: a temporary file beside it,
// synced, renamed over it. Readers see the old file or the new one, never
// part of one.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	err = errors.Join(werr, serr, cerr)
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}
