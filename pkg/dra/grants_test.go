package dra_test

import (
	"errors"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gpuslice/gpuslice/pkg/dra"
)

const pool = "node-a"

func claim(results ...resourceapi.DeviceRequestAllocationResult) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "c", UID: "uid-c"}}
	c.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: results}}
	return c
}

// share is one result on gpu-<index> of this driver and pool consuming
// compute (slices) and memory (GiB); negative compute leaves consumed
// capacity out, as an exclusive allocation has it.
func share(device string, compute, memoryGiB int64) resourceapi.DeviceRequestAllocationResult {
	r := resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: dra.DriverName, Pool: pool, Device: device}
	if compute >= 0 {
		r.ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{
			dra.CapacityCompute: *resource.NewQuantity(compute, resource.DecimalSI),
			dra.CapacityMemory:  *resource.NewQuantity(memoryGiB<<30, resource.BinarySI),
		}
	}
	return r
}

// TestGrantsReadTheAllocation: what a claim holds of each GPU is what the
// scheduler recorded it consumed; results of other drivers and pools are
// not this node's; a device or a capacity the node does not offer is an
// error, never a guess.
func TestGrantsReadTheAllocation(t *testing.T) {
	t.Parallel()
	l, _ := node(t, 2, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	other := share("gpu-0", 8, 80)
	other.Driver = "gpu.nvidia.com"
	elsewhere := share("gpu-1", 8, 80)
	elsewhere.Pool = "node-b"
	admin := share("gpu-1", 1, 10)
	admin.AdminAccess = ref(true)
	fractional := share("gpu-0", 1, 10)
	fractional.ConsumedCapacity[dra.CapacityCompute] = resource.MustParse("1500m")
	noMemory := share("gpu-0", 1, 10)
	delete(noMemory.ConsumedCapacity, dra.CapacityMemory)
	for _, tc := range []struct {
		name    string
		claim   *resourceapi.ResourceClaim
		slices  []int // per GPU in the answer
		memGiB  []uint64
		whole   bool
		wantErr error
	}{
		{"3 of 8 and 30 GiB", claim(share("gpu-1", 3, 30)), []int{3}, []uint64{30}, false, nil},
		{"two requests on one GPU add up", claim(share("gpu-0", 3, 30), share("gpu-0", 2, 10), share("gpu-1", 1, 10)), []int{5, 1}, []uint64{40, 10}, false, nil},
		{"no consumed capacity: held whole", claim(share("gpu-0", -1, 0)), []int{8}, []uint64{80}, true, nil},
		{"other drivers and pools are not ours", claim(other, elsewhere, share("gpu-1", 2, 20)), []int{2}, []uint64{20}, false, nil},
		{"admin access consumes nothing", claim(admin), []int{0}, []uint64{0}, false, nil},
		{"unknown GPU", claim(share("gpu-7", 1, 10)), nil, nil, false, dra.ErrUnknownDevice},
		{"not a device name", claim(share("gpu-01", 1, 10)), nil, nil, false, dra.ErrUnknownDevice},
		{"more compute than the GPU", claim(share("gpu-0", 9, 10)), nil, nil, false, dra.ErrBadCapacity},
		{"no compute at all", claim(share("gpu-0", 0, 10)), nil, nil, false, dra.ErrBadCapacity},
		{"a fraction of a slice", claim(fractional), nil, nil, false, dra.ErrBadCapacity},
		{"memory missing", claim(noMemory), nil, nil, false, dra.ErrBadCapacity},
		{"more memory than the GPU", claim(share("gpu-0", 1, 81)), nil, nil, false, dra.ErrBadCapacity},
		{"one claim past the GPU", claim(share("gpu-0", 5, 50), share("gpu-0", 4, 10)), nil, nil, false, dra.ErrOvercommitted},
		{"one claim past its memory", claim(share("gpu-0", 1, 50), share("gpu-0", 1, 40)), nil, nil, false, dra.ErrOvercommitted},
		{"not allocated", &resourceapi.ResourceClaim{}, nil, nil, false, dra.ErrNotAllocated},
		{"slice devices: one slice each, added up per GPU", claim(share("gpu-0-slice-0", -1, 0), share("gpu-0-slice-7", -1, 0), share("gpu-1-slice-3", -1, 0)), []int{2, 1}, []uint64{20, 10}, false, nil},
		{"a slice the GPU does not have", claim(share("gpu-0-slice-8", -1, 0)), nil, nil, false, dra.ErrUnknownDevice},
		{"not a slice device name", claim(share("gpu-0-slice-01", -1, 0)), nil, nil, false, dra.ErrUnknownDevice},
		{"a slice of an unknown GPU", claim(share("gpu-7-slice-0", -1, 0)), nil, nil, false, dra.ErrUnknownDevice},
		{"a sized device: its slices of one GPU", claim(share("gpu-1-x3-1", -1, 0)), []int{3}, []uint64{30}, false, nil},
		{"sized devices add up per GPU", claim(share("gpu-0-x4-0", -1, 0), share("gpu-0-x2-3", -1, 0)), []int{6}, []uint64{60}, false, nil},
		{"a sized device past its GPU", claim(share("gpu-0-x3-2", -1, 0)), nil, nil, false, dra.ErrUnknownDevice},
		{"a sized device of no slices", claim(share("gpu-0-x0-0", -1, 0)), nil, nil, false, dra.ErrUnknownDevice},
		{"not a sized device name", claim(share("gpu-0-x03-1", -1, 0)), nil, nil, false, dra.ErrUnknownDevice},
		{"a sized device without a number", claim(share("gpu-0-x4", -1, 0)), nil, nil, false, dra.ErrUnknownDevice},
		{"sized devices past the GPU in one claim", claim(share("gpu-0-x4-0", -1, 0), share("gpu-0-x4-1", -1, 0), share("gpu-0-slice-0", -1, 0)), nil, nil, false, dra.ErrOvercommitted},
		{"an unknown part", claim(share("gpu-0-part-1", -1, 0)), nil, nil, false, dra.ErrUnknownDevice},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dra.Grants(tc.claim, pool, l, nil)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Grants = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if len(got) != len(tc.slices) {
				t.Fatalf("%d grants, want %d: %+v", len(got), len(tc.slices), got)
			}
			for i, g := range got {
				if g.Slices != tc.slices[i] || g.MemoryBytes != tc.memGiB[i]<<30 || g.Whole != tc.whole || g.SlicesTotal != 8 {
					t.Errorf("grant %d = %+v, want %d slices, %d GiB, whole %t", i, g, tc.slices[i], tc.memGiB[i], tc.whole)
				}
				if want := float64(g.Slices) / 8; g.ComputeRatio != want {
					t.Errorf("grant %d ratio %v, want %v", i, g.ComputeRatio, want)
				}
			}
		})
	}
}

// TestLedgerRefusesOvercommit is the attack on the last line of defence:
// whatever the scheduler (or a forged status) says, the claims prepared on
// a GPU never hold more than its slices or its memory, and a GPU held
// whole is shared with nobody. Preparing a claim again is no conflict
// with itself, and a released claim frees what it held.
func TestLedgerRefusesOvercommit(t *testing.T) {
	t.Parallel()
	l, _ := node(t, 1, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	grants := func(results ...resourceapi.DeviceRequestAllocationResult) []dra.Grant {
		g, err := dra.Grants(claim(results...), pool, l, nil)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	admin := share("gpu-0", 1, 10)
	admin.AdminAccess = ref(true)
	led := dra.NewLedger()
	steps := []struct {
		uid  types.UID
		held []dra.Grant
		ok   bool
	}{
		{"a", grants(share("gpu-0", 3, 30)), true},
		{"b", grants(share("gpu-0", 4, 40)), true},
		{"a", grants(share("gpu-0", 3, 30)), true},  // prepared again
		{"c", grants(share("gpu-0", 2, 10)), false}, // 9 of 8 slices
		{"d", grants(share("gpu-0", 1, 20)), false}, // 90 of 80 GiB
		{"e", grants(share("gpu-0", 1, 10)), true},  // exactly full
		{"f", grants(share("gpu-0", -1, 0)), false}, // whole, while shared
		{"m", grants(admin), true},                  // monitoring takes nothing
	}
	for i, s := range steps {
		err := led.Admit(s.uid, s.held)
		if (err == nil) != s.ok || err != nil && !errors.Is(err, dra.ErrOvercommitted) {
			t.Fatalf("step %d, claim %s: Admit = %v, want ok %t", i, s.uid, err, s.ok)
		}
	}
	for _, uid := range []types.UID{"a", "b", "e", "nobody"} {
		led.Release(uid)
	}
	if err := led.Admit("f", grants(share("gpu-0", -1, 0))); err != nil {
		t.Errorf("whole GPU after every share was released: %v", err)
	}
	if err := led.Admit("g", grants(share("gpu-0", 1, 10))); !errors.Is(err, dra.ErrOvercommitted) {
		t.Errorf("a share of a GPU held whole = %v, want ErrOvercommitted", err)
	}
}
