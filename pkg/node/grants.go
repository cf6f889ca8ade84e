package node

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// DevicesKey identifies a container's allocation by its device IDs, in any
// order: one slice is held by one container at a time.
func DevicesKey(ids []string) string {
	sorted := append([]string(nil), ids...)
	sort.Strings(sorted)
	return strings.Join(sorted, ",")
}

// GrantsByDevices indexes what Allocate gave each container of the slice
// resources (resource, and the slices of MIG instances:
// contract.IsSliceResource), as the kubelet's checkpoint recorded it, by
// DevicesKey.
func GrantsByDevices(checkpoint []CheckpointEntry, resource string) map[string][]contract.Grant {
	out := map[string][]contract.Grant{}
	for _, e := range checkpoint {
		if contract.IsSliceResource(resource, e.Resource) && e.Grants != nil {
			out[DevicesKey(e.DeviceIDs)] = e.Grants
		}
	}
	return out
}

// LimitsFor is what a container holding ids may use, per GPU ordered by
// index. What Allocate gave it (grants, from the kubelet's checkpoint)
// wins over the current layout: when the node's slicing changes under
// running pods (helm upgrade of slicesPerGPU), each keeps the memory and
// compute it was given until it ends, instead of its slice IDs being read
// in a layout they were not cut from. Without grants (a checkpoint the
// agent cannot read) the layout decides, and IDs it does not know are an
// error.
func LimitsFor(layout *vgpu.Layout, ids []string, grants []contract.Grant) ([]vgpu.GPULimit, error) {
	if grants == nil {
		return layout.Limits(ids)
	}
	out := make([]vgpu.GPULimit, 0, len(grants))
	for _, g := range grants {
		gpu, ok := layout.GPU(g.UUID)
		if !ok {
			return nil, fmt.Errorf("granted GPU %s is not on this node", g.UUID)
		}
		out = append(out, vgpu.GPULimit{
			UUID: g.UUID, Index: gpu.Index, Slices: g.Slices, SlicesTotal: gpu.Slices,
			MemoryBytes: g.MemoryBytes, ComputeRatio: g.ComputeRatio,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, nil
}

// ClaimLimits is what a container holding DRA claims may use, per GPU
// ordered by index: each claim's share, from the DRA driver's record,
// split evenly among the containers that hold it (consumers, by claim
// UID), since a claim's share is what all its holders together may use.
// Admin access holds nothing and limits nothing. A claim the record does
// not have, or a GPU not on the node, is an error; the claims that can be
// read are still returned.
func ClaimLimits(layout *vgpu.Layout, claims []string, prepared map[string]contract.PreparedClaim, consumers map[string]int) ([]vgpu.GPULimit, error) {
	byUUID := map[string]*vgpu.GPULimit{}
	var errs []error
	for _, uid := range claims {
		c, ok := prepared[uid]
		if !ok {
			errs = append(errs, fmt.Errorf("claim %s is not in the DRA driver's record", uid))
			continue
		}
		n := max(consumers[uid], 1)
		for _, g := range c.Grants {
			if g.Admin {
				continue
			}
			gpu, ok := layout.GPU(g.UUID)
			switch {
			case g.Parent != "":
				// A MIG instance, held whole: it is no GPU of the slice
				// layout, and the grant says all there is to it.
				gpu = vgpu.GPUSlices{GPU: vgpu.GPU{UUID: g.UUID, Index: g.Index}, Slices: g.SlicesTotal}
			case !ok:
				errs = append(errs, fmt.Errorf("claim %s/%s: GPU %s is not on this node", c.Namespace, c.Name, g.UUID))
				continue
			}
			l := byUUID[g.UUID]
			if l == nil {
				l = &vgpu.GPULimit{UUID: g.UUID, Index: gpu.Index, SlicesTotal: gpu.Slices}
				byUUID[g.UUID] = l
			}
			l.Slices += g.Slices
			l.MemoryBytes += g.MemoryBytes / uint64(n)
			l.ComputeRatio += g.ComputeRatio / float64(n)
		}
	}
	out := make([]vgpu.GPULimit, 0, len(byUUID))
	for _, l := range byUUID {
		out = append(out, *l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, errors.Join(errs...)
}
