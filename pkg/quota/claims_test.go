package quota

import (
	"math/rand/v2"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

const class = "gpu.gpuslice.io"

// sizes: node-a publishes an 8-slice GPU of 10 GiB slices and a 4-slice
// one of 20 GiB slices.
func testSizes() DeviceSizes {
	dev := func(name string, n, sliceGiB int64) resourceapi.Device {
		return resourceapi.Device{Name: name, Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			capacityCompute: {Value: *resource.NewQuantity(n, resource.DecimalSI)},
			capacityMemory:  {Value: *resource.NewQuantity(n*sliceGiB<<30, resource.BinarySI)},
		}}
	}
	return SizesFromSlices([]*resourceapi.ResourceSlice{
		{Spec: resourceapi.ResourceSliceSpec{Driver: contract.DRADriverName, Pool: resourceapi.ResourcePool{Name: "node-a"},
			Devices: []resourceapi.Device{dev("gpu-0", 8, 10), dev("gpu-1", 4, 20)}}},
		// Another driver's 64-slice device changes nothing.
		{Spec: resourceapi.ResourceSliceSpec{Driver: "other.example.com", Pool: resourceapi.ResourcePool{Name: "node-a"},
			Devices: []resourceapi.Device{dev("gpu-0", 64, 1)}}},
	})
}

func exact(name, cls string, mode resourceapi.DeviceAllocationMode, count int64) resourceapi.DeviceRequest {
	return resourceapi.DeviceRequest{Name: name, Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: cls, AllocationMode: mode, Count: count}}
}

func result(req, device string, compute, memGiB int64) resourceapi.DeviceRequestAllocationResult {
	r := resourceapi.DeviceRequestAllocationResult{Request: req, Driver: contract.DRADriverName, Pool: "node-a", Device: device}
	if compute > 0 {
		r.ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{
			capacityCompute: *resource.NewQuantity(compute, resource.DecimalSI),
			capacityMemory:  *resource.NewQuantity(memGiB<<30, resource.BinarySI),
		}
	}
	return r
}

func claim(reqs []resourceapi.DeviceRequest, results ...resourceapi.DeviceRequestAllocationResult) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ml"},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: reqs}}}
	if results != nil {
		c.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: results}}
	}
	return c
}

func TestSizesFromSlices(t *testing.T) {
	s := testSizes()
	if s.PerDevice != 8 || s.ByName["node-a/gpu-0"] != (DeviceSize{8, 10 << 30}) || s.ByName["node-a/gpu-1"] != (DeviceSize{4, 20 << 30}) || len(s.ByName) != 2 {
		t.Fatalf("sizes = %+v", s)
	}
}

func TestCountClaim(t *testing.T) {
	one := []resourceapi.DeviceRequest{exact("gpu", class, resourceapi.DeviceAllocationModeExactCount, 1)}
	admin := result("gpu", "gpu-0", 0, 0)
	yes := true
	admin.AdminAccess = &yes
	foreign := result("gpu", "gpu-0", 0, 0)
	foreign.Driver = "other.example.com"
	for name, tc := range map[string]struct {
		claim            *resourceapi.ResourceClaim
		devices, slices  int64
		ours             bool
		uncapped         string
		admin            bool
		classes          []string
		otherClassDevice int64
	}{
		"allocated share: its compute":                                          {claim: claim(one, result("gpu", "gpu-0", 3, 30)), devices: 1, slices: 3, ours: true},
		"memory-heavy share: its memory in slices":                              {claim: claim(one, result("gpu", "gpu-0", 1, 75)), devices: 1, slices: 8, ours: true},
		"memory rounds up on a 20 GiB-slice GPU":                                {claim: claim(one, result("gpu", "gpu-1", 1, 21)), devices: 1, slices: 2, ours: true},
		"no consumed capacity: held whole":                                      {claim: claim(one, result("gpu", "gpu-1", 0, 0)), devices: 1, slices: 4, ours: true},
		"admin access holds nothing, and is counted apart":                      {claim: claim(one, admin), devices: 1, ours: true, admin: true},
		"device gone from the slices: a whole GPU":                              {claim: claim(one, result("gpu", "gpu-9", 1, 10)), devices: 1, slices: 8, ours: true},
		"not allocated: a whole GPU per device":                                 {claim: claim([]resourceapi.DeviceRequest{exact("gpu", class, resourceapi.DeviceAllocationModeExactCount, 3)}), devices: 3, slices: 24, ours: true},
		"All mode: the API's most devices":                                      {claim: claim([]resourceapi.DeviceRequest{exact("gpu", class, resourceapi.DeviceAllocationModeAll, 0)}), devices: 32, slices: 256, ours: true},
		"another driver's claim is not ours":                                    {claim: claim([]resourceapi.DeviceRequest{exact("nic", "nic.example.com", resourceapi.DeviceAllocationModeExactCount, 1)}, foreign)},
		"a class mapping the extended resource is counted as it, not as claims": {claim: claim([]resourceapi.DeviceRequest{exact("gpu", "vgpu.gpuslice.io", resourceapi.DeviceAllocationModeExactCount, 2)}, result("gpu", "gpu-0-slice-0", 0, 0), result("gpu", "gpu-0-slice-1", 0, 0))},
		"an uncapped class reaching our devices":                                {claim: claim([]resourceapi.DeviceRequest{exact("gpu", "sneaky", resourceapi.DeviceAllocationModeExactCount, 1)}, result("gpu", "gpu-0", 2, 20)), slices: 2, ours: true, uncapped: "sneaky"},
		"a second capped class counts on its own key":                           {claim: claim([]resourceapi.DeviceRequest{exact("gpu", "shared", resourceapi.DeviceAllocationModeExactCount, 2)}), classes: []string{class, "shared"}, otherClassDevice: 2, slices: 16, ours: true},
		"first available: the most any alternative asks": {claim: claim([]resourceapi.DeviceRequest{{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
			{Name: "big", DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1},
			{Name: "small", DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 2},
		}}}), devices: 2, slices: 16, ours: true},
	} {
		t.Run(name, func(t *testing.T) {
			classes := tc.classes
			if classes == nil {
				classes = []string{class}
			}
			got := CountClaim(tc.claim, Classes{Capped: classes, Mapped: []string{"vgpu.gpuslice.io"}}, testSizes())
			if got.Devices[class] != tc.devices || got.Slices != tc.slices || got.Ours != tc.ours || got.Uncapped != tc.uncapped || got.Devices["shared"] != tc.otherClassDevice || got.AdminAccess != tc.admin {
				t.Errorf("CountClaim = %+v; want %d devices, %d slices, ours %v, uncapped %q", got, tc.devices, tc.slices, tc.ours, tc.uncapped)
			}
		})
	}
}

func TestClaimLimits(t *testing.T) {
	i := func(v int64) *int64 { return &v }
	use := func(devices, slices int64) *ClaimUse {
		return &ClaimUse{Classes: []string{class, "shared"}, Devices: map[string]int64{class: devices, "shared": 1}, Slices: slices, PerDevice: 8}
	}
	for name, tc := range map[string]struct {
		spec      Spec
		use       *ClaimUse
		metricsOK bool
		hours     float64
		previous  *Decision
		want      map[string]int64
		reason    string
	}{
		"no DRA classes: nothing":                      {spec: Spec{MaxSlices: i(4)}, metricsOK: true},
		"no cap: claims free":                          {spec: Spec{}, use: use(2, 5), metricsOK: true},
		"maxSlices alone closes claims":                {spec: Spec{MaxSlices: i(16)}, use: use(2, 5), metricsOK: true, want: map[string]int64{class: 2, "shared": 1}, reason: "maxClaimSlices is unset"},
		"room for whole GPUs only":                     {spec: Spec{MaxClaimSlices: i(24)}, use: use(2, 5), metricsOK: true, want: map[string]int64{class: 4, "shared": 1}, reason: "room for 2 more"},
		"less than a GPU left: no new device":          {spec: Spec{MaxClaimSlices: i(12)}, use: use(2, 5), metricsOK: true, want: map[string]int64{class: 2, "shared": 1}, reason: "room for 0 more"},
		"over the cap: none, never negative":           {spec: Spec{MaxClaimSlices: i(2)}, use: use(2, 5), metricsOK: true, want: map[string]int64{class: 2, "shared": 1}},
		"no device published: closed":                  {spec: Spec{MaxClaimSlices: i(64)}, use: &ClaimUse{Classes: []string{class}, Devices: map[string]int64{}}, metricsOK: true, want: map[string]int64{class: 0}, reason: "no gpuslice device"},
		"budget exhausted closes claims":               {spec: Spec{MaxClaimSlices: i(64), Budget: &Budget{GPUHours: 1, Window: Duration{Duration: 3600e9}}}, use: use(2, 5), metricsOK: true, hours: 2, want: map[string]int64{class: 2, "shared": 1}, reason: "budget exhausted"},
		"metrics down: an exhausted budget stays shut": {spec: Spec{Budget: &Budget{GPUHours: 1, Window: Duration{Duration: 3600e9}}}, use: use(3, 5), previous: &Decision{BudgetExhausted: true}, want: map[string]int64{class: 3, "shared": 1}},
		"metrics down, no history: the cap alone":      {spec: Spec{MaxClaimSlices: i(21)}, use: use(0, 0), want: map[string]int64{class: 2, "shared": 1}},
		// A class the controller was not told of, seen reaching gpuslice's
		// devices: closed at what its claims hold, also with no cap at all
		// (before: only logged, its claims unlimited).
		"an uncapped class, no cap: closed at what it holds": {spec: Spec{}, use: withUncapped(use(2, 5), "other.example.com", 3), metricsOK: true,
			want: map[string]int64{"other.example.com": 3}, reason: "not one the controller caps"},
		"an uncapped class beside a cap": {spec: Spec{MaxClaimSlices: i(24)}, use: withUncapped(use(2, 5), "other.example.com", 1), metricsOK: true,
			want: map[string]int64{class: 4, "shared": 1, "other.example.com": 1}, reason: "room for 2 more"},
	} {
		t.Run(name, func(t *testing.T) {
			d := Decide(Input{Spec: tc.spec, Claims: tc.use, MetricsOK: tc.metricsOK, UsedGPUHours: tc.hours, Previous: tc.previous})
			if len(d.ClaimDevices) != len(tc.want) || (tc.want == nil) != (d.ClaimDevices == nil) {
				t.Fatalf("ClaimDevices = %v (%s), want %v", d.ClaimDevices, d.ClaimReason, tc.want)
			}
			for k, v := range tc.want {
				if d.ClaimDevices[k] != v {
					t.Errorf("ClaimDevices = %v (%s), want %v", d.ClaimDevices, d.ClaimReason, tc.want)
				}
			}
			if !strings.Contains(d.ClaimReason, tc.reason) {
				t.Errorf("ClaimReason %q, want it to say %q", d.ClaimReason, tc.reason)
			}
		})
	}
}

func withUncapped(u *ClaimUse, class string, n int64) *ClaimUse {
	u.Uncapped = map[string]int64{class: n}
	return u
}

// TestClaimLimitsNeverLetSlicesPastTheCap is the property the claim limit
// exists for: whatever the tenant does until the next cycle, filling every
// device the limit admits with the largest GPU's slices, its claims hold
// at most maxClaimSlices, or no more than they held already.
func TestClaimLimitsNeverLetSlicesPastTheCap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		limit, held, per, devices := r.Int64N(80), r.Int64N(80), 1+r.Int64N(16), r.Int64N(10)
		d := Decide(Input{Spec: Spec{MaxClaimSlices: &limit}, MetricsOK: true,
			Claims: &ClaimUse{Classes: []string{class}, Devices: map[string]int64{class: devices}, Slices: held, PerDevice: per}})
		newDevices := d.ClaimDevices[class] - devices
		if newDevices < 0 || held+newDevices*per > max(limit, held) {
			t.Fatalf("cap %d, held %d slices in %d devices, up to %d slices a device: limit %d lets them reach %d slices",
				limit, held, devices, per, d.ClaimDevices[class], held+newDevices*per)
		}
	}
}
