package dra

import (
	"errors"
	"fmt"
	"maps"
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
	CapacityCompute resourceapi.QualifiedName = contract.DRACapacityCompute
	// CapacityMemory is the GPU's memory in bytes, consumed in steps of
	// one slice's memory; the watchdog and the driver's limits hold a
	// claim to what it consumed.
	CapacityMemory resourceapi.QualifiedName = contract.DRACapacityMemory
)

// The attributes of every GPU device.
const (
	AttrUUID              resourceapi.QualifiedName = "uuid"
	AttrIndex             resourceapi.QualifiedName = "index"
	AttrProductName       resourceapi.QualifiedName = "productName"
	AttrComputeCapability resourceapi.QualifiedName = "computeCapability"
	AttrDriverVersion     resourceapi.QualifiedName = "driverVersion"
	AttrNUMANode          resourceapi.QualifiedName = "numaNode"
	// The standard attributes (resource.kubernetes.io, KEP-6072 and the
	// DRA helper library's): a claim's matchAttribute on one of them
	// aligns a GPU with another driver's device, such as a NIC on the
	// same NUMA node or under the same PCIe root.
	AttrStandardNUMANode resourceapi.QualifiedName = "resource.kubernetes.io/numaNode"
	AttrStandardPCIBusID resourceapi.QualifiedName = "resource.kubernetes.io/pciBusID"
	AttrStandardPCIeRoot resourceapi.QualifiedName = "resource.kubernetes.io/pcieRoot"
	AttrPCIBusID         resourceapi.QualifiedName = "pciBusID"
	AttrSlices           resourceapi.QualifiedName = "slices"
	AttrSliceMemory      resourceapi.QualifiedName = "sliceMemoryBytes"
	// AttrKind tells a GPU shared by capacity (KindGPU) from one slice of
	// it (KindSlice): each DeviceClass selects one kind.
	AttrKind resourceapi.QualifiedName = "kind"
)

// The kinds of device (AttrKind).
const (
	KindGPU   = "gpu"
	KindSlice = "slice"
	// KindSized is a device of a fixed number of slices (AttrSize) of one
	// GPU, for a DeviceClass per size whose extendedResourceName maps
	// "<resource>-<k>: 1" to k slices of one GPU.
	KindSized = "sized"
)

// AttrSize is how many slices of its GPU a sized device is.
const AttrSize resourceapi.QualifiedName = "size"

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
		AttrKind:        {StringValue: ref(KindGPU)},
	}
	if d.ComputeMajor > 0 {
		attrs[AttrComputeCapability] = resourceapi.DeviceAttribute{VersionValue: ref(fmt.Sprintf("%d.%d.0", d.ComputeMajor, d.ComputeMinor))}
	}
	if v, ok := SemVer(sys.DriverVersion); ok {
		attrs[AttrDriverVersion] = resourceapi.DeviceAttribute{VersionValue: ref(v)}
	}
	if d.NUMANode >= 0 {
		attrs[AttrNUMANode] = resourceapi.DeviceAttribute{IntValue: ref(int64(d.NUMANode))}
		attrs[AttrStandardNUMANode] = resourceapi.DeviceAttribute{IntValue: ref(int64(d.NUMANode))}
	}
	if d.PCIBusID != "" {
		attrs[AttrPCIBusID] = resourceapi.DeviceAttribute{StringValue: ref(d.PCIBusID)}
		if addr := nvml.SysfsAddress(d.PCIBusID); addr != "" {
			attrs[AttrStandardPCIBusID] = resourceapi.DeviceAttribute{StringValue: ref(addr)}
		}
	}
	if d.PCIeRoot != "" {
		attrs[AttrStandardPCIeRoot] = resourceapi.DeviceAttribute{StringValue: ref(d.PCIeRoot)}
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

// SliceDeviceName is the name of slice j of the GPU with NVML index i:
// "gpu-<i>-slice-<j>".
func SliceDeviceName(index, j int) string {
	return DeviceName(index) + "-slice-" + strconv.Itoa(j)
}

// SizedDeviceName is the name of sized device j of k slices of the GPU
// with NVML index i: "gpu-<i>-x<k>-<j>".
func SizedDeviceName(index, k, j int) string {
	return DeviceName(index) + "-x" + strconv.Itoa(k) + "-" + strconv.Itoa(j)
}

// CounterSetName is the name of a GPU's counter set: its device's name.
func CounterSetName(index int) string { return DeviceName(index) }

// WithSliceDevices adds, to the GPU devices Devices returned, one device
// per slice, so that a DeviceClass with an extendedResourceName can serve
// nvidia.com/vgpu: k as k slice devices (Kubernetes maps an extended
// resource to a count of distinct devices). Each GPU gets a counter set of
// its compute (slices) and memory; a slice device consumes one slice of
// both, the GPU's shared device all of them. The scheduler charges a
// shared device's counters once, when its first claim takes it, so at any
// time a GPU serves either shares or slices, never both. The slice devices
// follow the GPU devices, a GPU's in order, so that pods pack onto the
// first GPUs as in device-plugin mode.
func WithSliceDevices(gpus []resourceapi.Device) ([]resourceapi.Device, []resourceapi.CounterSet) {
	return Partitioned(gpus, true, nil)
}

// Partitioned adds to the GPU devices Devices returned the devices that
// are parts of them, each consuming its slices of its GPU's counter set
// (the GPU's shared device consumes all of it): with slices, one device
// per slice (WithSliceDevices); and for each size k in sizes, as many
// devices of k slices as fit the GPU, so that a DeviceClass per size can
// map "<resource>-<k>: 1" to k slices of one GPU (an extended resource
// maps to a count of distinct devices, and one device is on one GPU). A
// size of 1 is a slice, so it is left to slices. The parts follow the GPU
// devices, a GPU's in order.
func Partitioned(gpus []resourceapi.Device, slices bool, sizes []int) ([]resourceapi.Device, []resourceapi.CounterSet) {
	devices := make([]resourceapi.Device, 0, len(gpus))
	var parts []resourceapi.Device
	counterSets := make([]resourceapi.CounterSet, 0, len(gpus))
	for _, g := range gpus {
		index := int(*g.Attributes[AttrIndex].IntValue)
		n := *g.Attributes[AttrSlices].IntValue
		sliceMem := *g.Attributes[AttrSliceMemory].IntValue
		set := CounterSetName(index)
		counterSets = append(counterSets, resourceapi.CounterSet{Name: set, Counters: counters(n, n*sliceMem)})
		g = *g.DeepCopy()
		g.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{CounterSet: set, Counters: counters(n, n*sliceMem)}}
		devices = append(devices, g)
		part := func(name, kind string, k int64) resourceapi.Device {
			d := resourceapi.Device{Name: name, Attributes: maps.Clone(g.Attributes)}
			d.Attributes[AttrKind] = resourceapi.DeviceAttribute{StringValue: ref(kind)}
			d.Attributes[AttrSize] = resourceapi.DeviceAttribute{IntValue: ref(k)}
			d.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
				CapacityCompute: {Value: *resource.NewQuantity(k, resource.BinarySI)},
				CapacityMemory:  {Value: *resource.NewQuantity(k*sliceMem, resource.BinarySI)},
			}
			d.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{CounterSet: set, Counters: counters(k, k*sliceMem)}}
			return d
		}
		if slices {
			for j := range int(n) {
				parts = append(parts, part(SliceDeviceName(index, j), KindSlice, 1))
			}
		}
		for _, k := range sizes {
			for j := range int(n) / max(k, 1) {
				if k > 1 {
					parts = append(parts, part(SizedDeviceName(index, k, j), KindSized, int64(k)))
				}
			}
		}
	}
	return append(devices, parts...), counterSets
}

// counters is a GPU's compute (slices) and memory (bytes) as counters.
func counters(compute, memory int64) map[string]resourceapi.Counter {
	return map[string]resourceapi.Counter{
		contract.DRACapacityCompute: {Value: *resource.NewQuantity(compute, resource.BinarySI)},
		contract.DRACapacityMemory:  {Value: *resource.NewQuantity(memory, resource.BinarySI)},
	}
}

// CounterSlices cuts counter sets into ResourceSlices' worth, at most
// resourceapi.ResourceSliceMaxCounterSets each, in order.
func CounterSlices(sets []resourceapi.CounterSet) [][]resourceapi.CounterSet {
	return chunks(sets, resourceapi.ResourceSliceMaxCounterSets)
}

// chunks cuts items into runs of at most n, in order.
func chunks[T any](items []T, n int) [][]T {
	var out [][]T
	for len(items) > n {
		out = append(out, items[:n:n])
		items = items[n:]
	}
	if len(items) > 0 {
		out = append(out, items)
	}
	return out
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
	return chunks(devices, MaxDevicesPerSlice)
}

func ref[T any](v T) *T { return &v }
