package node

import (
	"fmt"
	"sort"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/attribution"
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

// GrantsByDevices indexes what Allocate gave each container of resource,
// as the kubelet's checkpoint recorded it, by DevicesKey.
func GrantsByDevices(checkpoint []attribution.CheckpointEntry, resource string) map[string][]contract.Grant {
	out := map[string][]contract.Grant{}
	for _, e := range checkpoint {
		if e.Resource == resource && e.Grants != nil {
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
