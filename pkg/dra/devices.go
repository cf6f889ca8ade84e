package dra

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// DriverName is the DRA driver's name: the domain of its attributes and
// capacities, and what DeviceClasses select on.
const DriverName = contract.DRADriverName

// The capacities every GPU device offers, consumed by each claim that
// shares it.
const (
	// CapacityCompute is the GPU's compute in slices: a claim that
	// consumes k of N runs at k/N of the GPU under the throttle.
	CapacityCompute resourceapi.QualifiedName = "compute"
	// CapacityMemory is the GPU's memory in bytes, consumed in steps of
	// one slice's memory; the watchdog and the driver's limits hold a
	// claim to what it consumed.
	CapacityMemory resourceapi.QualifiedName = "memory"
)

// The attributes of every GPU device.
const (
	AttrUUID              resourceapi.QualifiedName = "uuid"
	AttrIndex             resourceapi.QualifiedName = "index"
	AttrProductName       resourceapi.QualifiedName = "productName"
	AttrComputeCapability resourceapi.QualifiedName = "computeCapability"
	AttrDriverVersion     resourceapi.QualifiedName = "driverVersion"
	AttrNUMANode          resourceapi.QualifiedName = "numaNode"
	AttrPCIBusID          resourceapi.QualifiedName = "pciBusID"
	AttrSlices            resourceapi.QualifiedName = "slices"
	AttrSliceMemory       resourceapi.QualifiedName = "sliceMemoryBytes"
)

// MaxDevicesPerSlice is how many devices one ResourceSlice carries: the
// API's limit for slices whose devices may be tainted (a GPU that fails
// is tainted).
const MaxDevicesPerSlice = resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures

// ErrNoDevice reports a GPU of the layout that NVML did not report.
var ErrNoDevice = errors.New("no NVML device for GPU")

// DeviceName is the name of a GPU's device in the ResourceSlice: "gpu-"
// and its NVML index, a DNS label as the API requires.
func DeviceName(index int) string { return "gpu-" + strconv.Itoa(index) }

// Devices describes each GPU of the layout as one shareable device, in
// index order. devices gives what NVML reported of each GPU (matched by
// UUID); sys the driver stack.
func Devices(layout *vgpu.Layout, devices []nvml.Device, sys nvml.SystemInfo) ([]resourceapi.Device, error) {
	byUUID := make(map[string]nvml.Device, len(devices))
	for _, d := range devices {
		byUUID[d.UUID] = d
	}
	var out []resourceapi.Device
	for _, g := range layout.GPUs() {
		d, ok := byUUID[g.UUID]
		if !ok {
			return nil, fmt.Errorf("%w %s (index %d)", ErrNoDevice, g.UUID, g.Index)
		}
		out = append(out, device(g, d, sys))
	}
	return out, nil
}

func device(g vgpu.GPUSlices, d nvml.Device, sys nvml.SystemInfo) resourceapi.Device {
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		AttrUUID:        {StringValue: ref(g.UUID)},
		AttrIndex:       {IntValue: ref(int64(g.Index))},
		AttrProductName: {StringValue: ref(g.Model)},
		AttrSlices:      {IntValue: ref(int64(g.Slices))},
		AttrSliceMemory: {IntValue: ref(int64(g.SliceMemoryBytes))},
	}
	if d.ComputeMajor > 0 {
		attrs[AttrComputeCapability] = resourceapi.DeviceAttribute{VersionValue: ref(fmt.Sprintf("%d.%d.0", d.ComputeMajor, d.ComputeMinor))}
	}
	if v, ok := SemVer(sys.DriverVersion); ok {
		attrs[AttrDriverVersion] = resourceapi.DeviceAttribute{VersionValue: ref(v)}
	}
	if d.NUMANode >= 0 {
		attrs[AttrNUMANode] = resourceapi.DeviceAttribute{IntValue: ref(int64(d.NUMANode))}
	}
	if d.PCIBusID != "" {
		attrs[AttrPCIBusID] = resourceapi.DeviceAttribute{StringValue: ref(d.PCIBusID)}
	}
	return resourceapi.Device{
		Name:                     DeviceName(g.Index),
		Attributes:               attrs,
		AllowMultipleAllocations: ref(true),
		Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			CapacityCompute: stepped(int64(g.Slices), 1),
			CapacityMemory:  stepped(int64(g.Slices), int64(g.SliceMemoryBytes)),
		},
	}
}

// stepped is a capacity of n steps of size step, consumed in whole steps:
// one step unless a claim asks for more, and never more than n. The API
// wants min + step within the capacity, so a GPU of one slice has a range
// of exactly one step and no step size.
func stepped(n, step int64) resourceapi.DeviceCapacity {
	q := func(v int64) *resource.Quantity { return resource.NewQuantity(v, resource.BinarySI) }
	r := &resourceapi.CapacityRequestPolicyRange{Min: q(step), Max: q(n * step)}
	if n > 1 {
		r.Step = q(step)
	}
	return resourceapi.DeviceCapacity{
		Value:         *q(n * step),
		RequestPolicy: &resourceapi.CapacityRequestPolicy{Default: q(step), ValidRange: r},
	}
}

// SemVer turns NVIDIA's driver version ("580.65.06", "550.54") into a
// semantic version the API accepts ("580.65.6", "550.54.0"): semver
// forbids leading zeros. ok is false for anything else.
func SemVer(v string) (string, bool) {
	parts := strings.Split(v, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return "", false
	}
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil || p == "" {
			return "", false
		}
		parts[i] = strconv.FormatUint(n, 10)
	}
	return strings.Join(parts, "."), true
}

// Slices cuts the devices into ResourceSlices' worth, at most
// MaxDevicesPerSlice each, in order.
func Slices(devices []resourceapi.Device) [][]resourceapi.Device {
	var out [][]resourceapi.Device
	for len(devices) > MaxDevicesPerSlice {
		out = append(out, devices[:MaxDevicesPerSlice:MaxDevicesPerSlice])
		devices = devices[MaxDevicesPerSlice:]
	}
	if len(devices) > 0 {
		out = append(out, devices)
	}
	return out
}

func ref[T any](v T) *T { return &v }
