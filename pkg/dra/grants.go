package dra

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Errors Grants and Ledger.Admit report; each wraps the details.
var (
	// ErrNotAllocated reports a claim with no allocation.
	ErrNotAllocated = errors.New("claim is not allocated")
	// ErrUnknownDevice reports a device this node does not publish.
	ErrUnknownDevice = errors.New("unknown device")
	// ErrBadCapacity reports consumed capacity outside what the device
	// offers: the scheduler's answer cannot be right.
	ErrBadCapacity = errors.New("consumed capacity outside the device's range")
	// ErrOvercommitted reports a claim that would take a GPU past its
	// capacity together with the claims already prepared.
	ErrOvercommitted = errors.New("GPU overcommitted")
	// ErrHeldByDevicePlugin reports a claim on a GPU whose slices the
	// device plugin (nvidia.com/vgpu) hands out: one GPU serves one front
	// end at a time, since neither counts the other's holdings.
	ErrHeldByDevicePlugin = errors.New("GPU serves device-plugin slices")
)

// Grant is what one claim holds of one GPU: its compute in slices, its
// memory, and whether it holds the GPU whole (an allocation without
// consumed capacity, which only an exclusive allocation has) or only sees
// it (admin access). It is the record's own type, defined once in package
// contract, so what is prepared is what is recorded.
type Grant = contract.ClaimGrant

// Grants reads what a claim holds of this node's GPUs from its
// allocation: the results of this driver in pool, by GPU in index order,
// with the capacity several results on one GPU consumed added up.
//
// A result naming a MIG instance (mig) is a grant of all of it, named by
// the instance's UUID.
func Grants(claim *resourceapi.ResourceClaim, pool string, layout *vgpu.Layout, mig MIGInstances) ([]Grant, error) {
	if claim.Status.Allocation == nil {
		return nil, fmt.Errorf("%w: %s/%s", ErrNotAllocated, claim.Namespace, claim.Name)
	}
	byIndex := map[string]*Grant{}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != DriverName || r.Pool != pool {
			continue
		}
		var g Grant
		var err error
		if in, ok := mig[r.Device]; ok {
			g, err = migGrant(r, in)
		} else {
			g, err = grant(r, layout)
		}
		if err != nil {
			return nil, fmt.Errorf("claim %s/%s, request %s: %w", claim.Namespace, claim.Name, r.Request, err)
		}
		if err := add(byIndex, g); err != nil {
			return nil, fmt.Errorf("claim %s/%s: %w", claim.Namespace, claim.Name, err)
		}
	}
	out := make([]Grant, 0, len(byIndex))
	for _, g := range byIndex {
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b Grant) int { return cmp.Or(a.Index-b.Index, strings.Compare(a.UUID, b.UUID)) })
	return out, nil
}

func grant(r resourceapi.DeviceRequestAllocationResult, layout *vgpu.Layout) (Grant, error) {
	gpu, part, err := gpuOf(r.Device, layout)
	if err != nil {
		return Grant{}, err
	}
	capacity := uint64(gpu.Slices) * gpu.SliceMemoryBytes
	g := Grant{UUID: gpu.UUID, Index: gpu.Index, SlicesTotal: gpu.Slices, MemoryCapacity: capacity}
	if r.AdminAccess != nil && *r.AdminAccess {
		g.Admin = true
		return g, nil
	}
	switch {
	case part > 0:
		// A slice device, or a sized one: that many slices of compute
		// and of memory.
		g.Slices, g.MemoryBytes = part, uint64(part)*gpu.SliceMemoryBytes
	case len(r.ConsumedCapacity) == 0:
		g.Whole, g.Slices, g.MemoryBytes = true, gpu.Slices, capacity
	default:
		compute, ok := r.ConsumedCapacity[CapacityCompute]
		if !ok || compute.MilliValue()%1000 != 0 || compute.Value() < 1 || compute.Value() > int64(gpu.Slices) {
			return Grant{}, fmt.Errorf("%w: %s compute %s of %d slices", ErrBadCapacity, r.Device, compute.String(), gpu.Slices)
		}
		memory, ok := r.ConsumedCapacity[CapacityMemory]
		if !ok || memory.Value() < 1 || uint64(memory.Value()) > capacity {
			return Grant{}, fmt.Errorf("%w: %s memory %s of %d bytes", ErrBadCapacity, r.Device, memory.String(), capacity)
		}
		g.Slices, g.MemoryBytes = int(compute.Value()), uint64(memory.Value())
	}
	g.ComputeRatio = float64(g.Slices) / float64(gpu.Slices)
	return g, nil
}

// add merges g into what the claim holds of its GPU (or MIG instance).
func add(byUUID map[string]*Grant, g Grant) error {
	have, ok := byUUID[g.UUID]
	if !ok {
		byUUID[g.UUID] = &g
		return nil
	}
	have.Whole = have.Whole || g.Whole
	have.Admin = have.Admin && g.Admin
	have.Slices += g.Slices
	have.MemoryBytes += g.MemoryBytes
	if have.Slices > have.SlicesTotal || have.MemoryBytes > have.MemoryCapacity {
		return fmt.Errorf("%w: GPU %d takes %d of %d slices and %d of %d bytes in one claim", ErrOvercommitted, have.Index, have.Slices, have.SlicesTotal, have.MemoryBytes, have.MemoryCapacity)
	}
	have.ComputeRatio = float64(have.Slices) / float64(have.SlicesTotal)
	return nil
}

// gpuOf finds the GPU a device name stands for, and how many of its
// slices the device is: "gpu-<index>" (the GPU shared by capacity: 0),
// "gpu-<index>-slice-<j>" (one slice: 1), or "gpu-<index>-x<k>-<j>" (a
// sized device of k slices).
func gpuOf(device string, layout *vgpu.Layout) (vgpu.GPUSlices, int, error) {
	index, part, j, err := parseDeviceName(device)
	if err != nil {
		return vgpu.GPUSlices{}, 0, err
	}
	for _, g := range layout.GPUs() {
		if g.Index != index {
			continue
		}
		if part > 0 && (j+1)*part > g.Slices {
			return vgpu.GPUSlices{}, 0, fmt.Errorf("%w %q: GPU %d has %d slices", ErrUnknownDevice, device, index, g.Slices)
		}
		return g, part, nil
	}
	return vgpu.GPUSlices{}, 0, fmt.Errorf("%w %q: no GPU %d on this node", ErrUnknownDevice, device, index)
}

// parseDeviceName reads a device name the driver publishes: the GPU's
// index, the slices the device is (0 for the shared GPU device) and its
// number among the GPU's devices of that size.
func parseDeviceName(device string) (index, part, j int, err error) {
	bad := fmt.Errorf("%w %q", ErrUnknownDevice, device)
	rest, ok := strings.CutPrefix(device, "gpu-")
	if !ok {
		return 0, 0, 0, bad
	}
	n, tail, hasTail := strings.Cut(rest, "-")
	if index, err = strconv.Atoi(n); err != nil || index < 0 {
		return 0, 0, 0, bad
	}
	var want string
	switch {
	case !hasTail:
		want = DeviceName(index)
	case strings.HasPrefix(tail, "slice-"):
		j, err = strconv.Atoi(strings.TrimPrefix(tail, "slice-"))
		part, want = 1, SliceDeviceName(index, j)
	case strings.HasPrefix(tail, "x"):
		k, nj, _ := strings.Cut(strings.TrimPrefix(tail, "x"), "-")
		if part, err = strconv.Atoi(k); err == nil {
			j, err = strconv.Atoi(nj)
		}
		want = SizedDeviceName(index, part, j)
	}
	if err != nil || want == "" || want != device || part < 0 || j < 0 || (hasTail && part == 0) {
		return 0, 0, 0, bad
	}
	return index, part, j, nil
}

// Ledger is what the prepared claims hold of each GPU. It is the driver's
// last line of defence against a scheduler (or a forged status) handing
// out more of a GPU than it has: Admit refuses a claim that would take a
// GPU past its slices or its memory, or share a GPU held whole.
type Ledger struct {
	held map[types.UID][]Grant
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{held: map[types.UID][]Grant{}} }

// Admit records what a claim holds, unless that overcommits a GPU.
// Admitting a claim again replaces what it held, so it is idempotent.
func (l *Ledger) Admit(uid types.UID, grants []Grant) error {
	for _, g := range grants {
		if g.Admin {
			continue
		}
		slicesUsed, memoryUsed, whole, others := 0, uint64(0), false, 0
		for other, held := range l.held {
			for _, h := range held {
				if other != uid && h.UUID == g.UUID && !h.Admin {
					slicesUsed += h.Slices
					memoryUsed += h.MemoryBytes
					whole = whole || h.Whole
					others++
				}
			}
		}
		gpu := fmt.Sprintf("GPU %d (%s)", g.Index, g.UUID)
		switch {
		case others > 0 && (whole || g.Whole):
			return fmt.Errorf("%w: %s is held whole by one claim and shared by another", ErrOvercommitted, gpu)
		case slicesUsed+g.Slices > g.SlicesTotal:
			return fmt.Errorf("%w: %s: other claims hold %d of %d slices, this one takes %d", ErrOvercommitted, gpu, slicesUsed, g.SlicesTotal, g.Slices)
		case memoryUsed+g.MemoryBytes > g.MemoryCapacity:
			return fmt.Errorf("%w: %s: other claims hold %d of %d bytes of memory, this one takes %d", ErrOvercommitted, gpu, memoryUsed, g.MemoryCapacity, g.MemoryBytes)
		}
	}
	l.held[uid] = grants
	return nil
}

// Release forgets a claim; releasing one not held is no error.
func (l *Ledger) Release(uid types.UID) { delete(l.held, uid) }
