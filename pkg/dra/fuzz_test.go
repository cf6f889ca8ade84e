package dra_test

import (
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/gpuslice/gpuslice/pkg/dra"
)

// FuzzGrants: whatever device name and consumed capacity an allocation
// carries, Grants never panics, and what it grants lies within the GPU:
// 1..N slices (0 for admin access) and at most the GPU's memory.
func FuzzGrants(f *testing.F) {
	f.Add("gpu-0", "3", "30Gi", false)
	f.Add("gpu-1", "1500m", "1", true)
	f.Add("gpu-", "-1", "1e30", false)
	f.Add("gpu-00", "8", "80Gi", false)
	f.Add("gpu-1-slice-7", "", "", false)
	f.Add("gpu-1-slice-", "1", "1", false)
	l, _ := node(f, 2, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	f.Fuzz(func(t *testing.T, device, compute, memory string, admin bool) {
		r := resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: dra.DriverName, Pool: pool, Device: device, AdminAccess: &admin}
		c, errC := resource.ParseQuantity(compute)
		m, errM := resource.ParseQuantity(memory)
		if errC == nil && errM == nil {
			r.ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{dra.CapacityCompute: c, dra.CapacityMemory: m}
		}
		got, err := dra.Grants(claim(r), pool, l, nil)
		if err != nil {
			return
		}
		for _, g := range got {
			if !strings.HasPrefix(device, "gpu-") || g.MemoryBytes > g.MemoryCapacity || g.Slices > g.SlicesTotal || (!g.Admin && g.Slices < 1) || (g.Admin && g.Slices != 0) {
				t.Fatalf("%q %q %q admin %t: granted %+v", device, compute, memory, admin, g)
			}
		}
	})
}

// FuzzSemVer: a version SemVer accepts has three dot-separated numbers
// without leading zeros.
func FuzzSemVer(f *testing.F) {
	for _, s := range []string{"580.65.06", "550.54", "", "1.2.3.4", "007.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		v, ok := dra.SemVer(in)
		if !ok {
			return
		}
		parts := strings.Split(v, ".")
		if len(parts) != 3 {
			t.Fatalf("SemVer(%q) = %q", in, v)
		}
		for _, p := range parts {
			if p == "" || (len(p) > 1 && p[0] == '0') || strings.Trim(p, "0123456789") != "" {
				t.Fatalf("SemVer(%q) = %q", in, v)
			}
		}
	})
}
