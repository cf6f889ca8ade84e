package node

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// TestLimitsAcrossARelayout: slices cut when a GPU had 8 are read back
// after the node went to 4 per GPU. From the layout alone the container
// would hold twice its share (::0-::3 of 4) or, for IDs past the new
// layout, nothing at all; from what Allocate gave it, it keeps 3/8 and
// 15 GB.
func TestLimitsAcrossARelayout(t *testing.T) {
	gpus := []vgpu.GPU{{UUID: "GPU-a", Index: 0, MemoryBytes: 40e9}, {UUID: "GPU-b", Index: 1, MemoryBytes: 40e9}}
	now, err := vgpu.NewLayout(gpus, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 4}})
	if err != nil {
		t.Fatal(err)
	}
	given := []contract.Grant{{UUID: "GPU-b", Slices: 3, MemoryBytes: 15e9, ComputeRatio: 0.375}}
	checkpoint := []CheckpointEntry{
		{Resource: "nvidia.com/vgpu", DeviceIDs: []string{"GPU-b::0", "GPU-b::1", "GPU-b::2"}, Grants: given},
		{Resource: "nvidia.com/vgpu", DeviceIDs: []string{"GPU-a::5", "GPU-a::6"}, Grants: []contract.Grant{{UUID: "GPU-a", Slices: 2, MemoryBytes: 10e9, ComputeRatio: 0.25}}},
		{Resource: "example.com/fpga", DeviceIDs: []string{"GPU-a::0"}, Grants: given},
		{Resource: "nvidia.com/vgpu", DeviceIDs: []string{"GPU-a::1"}}, // no recorded response
	}
	granted := GrantsByDevices(checkpoint, "nvidia.com/vgpu")
	for _, tc := range []struct {
		name    string
		ids     []string
		want    []vgpu.GPULimit
		wantErr bool
	}{
		{"kept its 3 of 8", []string{"GPU-b::2", "GPU-b::0", "GPU-b::1"},
			[]vgpu.GPULimit{{UUID: "GPU-b", Index: 1, Slices: 3, SlicesTotal: 4, MemoryBytes: 15e9, ComputeRatio: 0.375}}, false},
		{"IDs past the new layout", []string{"GPU-a::6", "GPU-a::5"},
			[]vgpu.GPULimit{{UUID: "GPU-a", Index: 0, Slices: 2, SlicesTotal: 4, MemoryBytes: 10e9, ComputeRatio: 0.25}}, false},
		{"another resource's record is not ours", []string{"GPU-a::0"},
			[]vgpu.GPULimit{{UUID: "GPU-a", Index: 0, Slices: 1, SlicesTotal: 4, MemoryBytes: 10e9, ComputeRatio: 0.25}}, false},
		{"no record: the layout", []string{"GPU-a::1"},
			[]vgpu.GPULimit{{UUID: "GPU-a", Index: 0, Slices: 1, SlicesTotal: 4, MemoryBytes: 10e9, ComputeRatio: 0.25}}, false},
		{"no record, unknown ID", []string{"GPU-a::7"}, nil, true},
	} {
		got, err := LimitsFor(now, tc.ids, granted[DevicesKey(tc.ids)])
		if (err != nil) != tc.wantErr || !cmp.Equal(got, tc.want) {
			t.Errorf("%s: LimitsFor = %+v, %v; want %+v (error %v)", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
	if _, err := LimitsFor(now, []string{"GPU-z::0"}, []contract.Grant{{UUID: "GPU-z", Slices: 1, MemoryBytes: 1, ComputeRatio: 1}}); err == nil {
		t.Error("a grant of a GPU the node does not have was accepted")
	}
}
