package quota

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// Kubernetes quota counts what a ResourceClaim asks for in devices of a
// class, not in capacity: a claim for 1 of 8 slices counts as one device,
// as does a claim for all 8. The controller therefore caps claims through
// the device count (the only key Kubernetes enforces atomically at
// admission), sized so that even devices it has not seen yet cannot take
// a namespace past its slices: each counts as a whole GPU until the
// controller sees what it holds.

// DeviceClassQuotaKey is the ResourceQuota key that counts a device
// class's devices in claims: "<class>.deviceclass.resource.k8s.io/devices".
func DeviceClassQuotaKey(class string) string {
	return class + corev1.ResourceClaimsPerClass
}

// DeviceSize is one published device's size in slices.
type DeviceSize struct {
	// Slices is its compute capacity in slices; SliceMemory one slice's
	// memory in bytes.
	Slices, SliceMemory int64
}

// DeviceSizes are the driver's published devices by "pool/device", and
// the largest device's slices: the most one claim device can hold.
type DeviceSizes struct {
	ByName    map[string]DeviceSize
	PerDevice int64
}

// SizesFromSlices reads the sizes of the gpuslice driver's devices from
// ResourceSlices; slices of other drivers are skipped.
func SizesFromSlices(rs []*resourceapi.ResourceSlice) DeviceSizes {
	out := DeviceSizes{ByName: map[string]DeviceSize{}}
	for _, s := range rs {
		if s.Spec.Driver != contract.DRADriverName {
			continue
		}
		for _, d := range s.Spec.Devices {
			compute, ok := d.Capacity[capacityCompute]
			memory, okm := d.Capacity[capacityMemory]
			n := compute.Value.Value()
			if !ok || !okm || n < 1 {
				continue
			}
			out.ByName[s.Spec.Pool.Name+"/"+d.Name] = DeviceSize{Slices: n, SliceMemory: memory.Value.Value() / n}
			out.PerDevice = max(out.PerDevice, n)
		}
	}
	return out
}

// The driver's capacity names: compute in slices, memory in bytes.
const (
	capacityCompute resourceapi.QualifiedName = contract.DRACapacityCompute
	capacityMemory  resourceapi.QualifiedName = contract.DRACapacityMemory
)

// allResultsWorstCase is what Kubernetes quota counts for a request in
// All mode: the most devices one allocation may hold.
const allResultsWorstCase = resourceapi.AllocationResultsMaxSize

// ClaimCount is what one ResourceClaim counts for against claim caps.
type ClaimCount struct {
	// Devices is, by capped class, the devices Kubernetes quota counts for
	// it (from its spec, as the API server's evaluator counts them).
	Devices map[string]int64
	// Slices is what it holds of the driver's GPUs: for an allocated claim,
	// per device the larger of its compute and its memory in slices (a
	// whole GPU when it consumed no capacity, nothing for admin access);
	// for a claim not allocated yet, PerDevice for every device counted.
	Slices int64
	// Ours is true when it asks for a capped class or was allocated the
	// driver's devices.
	Ours bool
	// Uncapped names a device class through which it holds the driver's
	// devices but which is not capped: such a class bypasses claim caps.
	Uncapped string
	// AdminAccess is true when it holds one of the driver's devices with
	// admin access (monitoring: it holds no share, and is counted apart).
	AdminAccess bool
}

// Classes are the device classes whose claims reach the driver's devices.
type Classes struct {
	// Capped are counted as claims (ClaimUse) and capped by claim device
	// limits.
	Capped []string
	// Mapped map the extended resource (extendedResourceName): Kubernetes
	// counts their claims under requests.<resource>, which maxSlices caps,
	// so they are not counted again as claims.
	Mapped []string
}

// CountClaim says what a claim counts for, given the classes and the
// published devices.
func CountClaim(c *resourceapi.ResourceClaim, classes Classes, sizes DeviceSizes) ClaimCount {
	capped := func(cl string) bool { return slices.Contains(classes.Capped, cl) }
	out := ClaimCount{Devices: map[string]int64{}}
	classOf := map[string]string{} // request (or request/subrequest) -> class
	for _, r := range c.Spec.Devices.Requests {
		switch {
		case len(r.FirstAvailable) > 0:
			most := map[string]int64{}
			for _, sub := range r.FirstAvailable {
				classOf[r.Name+"/"+sub.Name] = sub.DeviceClassName
				most[sub.DeviceClassName] = max(most[sub.DeviceClassName], countOf(sub.AllocationMode, sub.Count))
			}
			for cl, n := range most {
				if capped(cl) {
					out.Devices[cl] += n
				}
			}
		case r.Exactly != nil:
			classOf[r.Name] = r.Exactly.DeviceClassName
			if capped(r.Exactly.DeviceClassName) {
				out.Devices[r.Exactly.DeviceClassName] += countOf(r.Exactly.AllocationMode, r.Exactly.Count)
			}
		}
	}
	for _, n := range out.Devices {
		out.Ours = out.Ours || n > 0
	}
	if c.Status.Allocation == nil {
		for _, n := range out.Devices {
			out.Slices += n * sizes.PerDevice
		}
		return out
	}
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver != contract.DRADriverName {
			continue
		}
		cl := classOf[r.Request]
		if slices.Contains(classes.Mapped, cl) {
			continue
		}
		out.Ours = true
		if r.AdminAccess != nil && *r.AdminAccess {
			out.AdminAccess = true
		}
		if cl != "" && !capped(cl) {
			out.Uncapped = cl
		}
		out.Slices += resultSlices(r, sizes)
	}
	return out
}

func countOf(mode resourceapi.DeviceAllocationMode, count int64) int64 {
	switch mode {
	case resourceapi.DeviceAllocationModeExactCount, "":
		return max(count, 1)
	case resourceapi.DeviceAllocationModeAll:
		return allResultsWorstCase
	}
	return 0 // an unknown mode: Kubernetes counts none either
}

// resultSlices is what one allocated device holds, in slices.
func resultSlices(r resourceapi.DeviceRequestAllocationResult, sizes DeviceSizes) int64 {
	if r.AdminAccess != nil && *r.AdminAccess {
		return 0
	}
	size, known := sizes.ByName[r.Pool+"/"+r.Device]
	if !known {
		// Its node is gone from the published slices: the worst case.
		size = DeviceSize{Slices: sizes.PerDevice}
	}
	if len(r.ConsumedCapacity) == 0 {
		return max(size.Slices, 1) // held whole
	}
	compute := r.ConsumedCapacity[capacityCompute]
	n := compute.Value()
	if memory, ok := r.ConsumedCapacity[capacityMemory]; ok && size.SliceMemory > 0 {
		n = max(n, (memory.Value()+size.SliceMemory-1)/size.SliceMemory)
	}
	if !known {
		n = max(n, size.Slices)
	}
	return max(n, 1)
}

// ClaimUse is what a namespace's claims count for, for claim caps.
type ClaimUse struct {
	// Classes are the capped device classes; the first gets the headroom,
	// the others are held at what their claims count now.
	Classes []string
	// Devices is, by class, the devices its claims count for: the smaller
	// of the controller's own count and the ResourceQuota's used, so a
	// device the API server counted before the controller saw it leaves
	// no extra headroom.
	Devices map[string]int64
	// Slices is what its claims hold (ClaimCount.Slices, added up).
	Slices int64
	// PerDevice is the most slices one device can hold; 0 while no device
	// is published.
	PerDevice int64
	// AdminAccess counts the claims holding the driver's devices with
	// admin access: they hold no share, so they are reported, not capped.
	AdminAccess int64
	// Uncapped is, by device class, the devices claims of a class that is
	// not in Classes hold although it reaches gpuslice's devices (their
	// allocation says so): such a class is closed at what it holds, never
	// left unlimited.
	Uncapped map[string]int64
}

// claimLimits is the claim-device limits for a namespace, and why: nil
// when nothing caps its claims. Exhausted closes them at what is held
// now; maxClaimSlices leaves room for as many more devices as fit whole in
// the slices not held; maxSlices alone closes them, since it caps only
// nvidia.com/vgpu requests and claims would otherwise bypass it.
func claimLimits(spec Spec, c *ClaimUse, exhausted bool) (map[string]int64, string) {
	if c == nil || len(c.Classes) == 0 {
		return nil, ""
	}
	m, reason := cappedLimits(spec, c, exhausted)
	if len(c.Uncapped) == 0 {
		return m, reason
	}
	if m == nil {
		m = map[string]int64{}
	}
	classes := make([]string, 0, len(c.Uncapped))
	for cl, n := range c.Uncapped {
		m[cl] = n
		classes = append(classes, cl)
	}
	slices.Sort(classes)
	uncapped := fmt.Sprintf("device class %s reaches gpuslice's devices but is not one the controller caps (--dra-device-classes): closed at what its claims hold", strings.Join(classes, ", "))
	if reason == "" {
		return m, uncapped
	}
	return m, reason + "; " + uncapped
}

// cappedLimits is claimLimits for the capped classes alone.
func cappedLimits(spec Spec, c *ClaimUse, exhausted bool) (map[string]int64, string) {
	closed := func() map[string]int64 {
		m := make(map[string]int64, len(c.Classes))
		for _, cl := range c.Classes {
			m[cl] = c.Devices[cl]
		}
		return m
	}
	switch {
	case exhausted:
		return closed(), "GPU-hour budget exhausted: no new claims"
	case spec.MaxClaimSlices != nil && c.PerDevice <= 0:
		return closed(), "no gpuslice device is published yet, so a new claim's size cannot be bounded: no new claims"
	case spec.MaxClaimSlices != nil:
		free := max(*spec.MaxClaimSlices-c.Slices, 0)
		room := free / c.PerDevice
		m := closed()
		m[c.Classes[0]] += room
		return m, fmt.Sprintf("maxClaimSlices: claims hold %d of %d slices; room for %d more device(s) of up to %d slices",
			c.Slices, *spec.MaxClaimSlices, room, c.PerDevice)
	case spec.MaxSlices != nil:
		return closed(), "maxSlices caps nvidia.com/vgpu requests and maxClaimSlices is unset: no new claims"
	}
	return nil, ""
}
