package dra

import (
	"fmt"
	"maps"
	"slices"
	"strconv"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// KindMIG is a MIG instance (AttrKind): one claim holds it whole.
const KindMIG = "mig"

// The attributes of a MIG instance's device, beside the GPU's own
// (index, productName, computeCapability, driverVersion, NUMA and PCI, of
// the GPU it is on). AttrUUID is the instance's own "MIG-..." UUID.
const (
	AttrParentUUID        resourceapi.QualifiedName = "parentUUID"
	AttrProfile           resourceapi.QualifiedName = "profile"
	AttrMemory            resourceapi.QualifiedName = "memory"
	AttrMultiprocessors   resourceapi.QualifiedName = "multiprocessors"
	AttrGPUInstanceID     resourceapi.QualifiedName = "gpuInstanceID"
	AttrComputeInstanceID resourceapi.QualifiedName = "computeInstanceID"
)

// MIGInstance is a MIG instance a claim may hold, with the GPU it is on.
type MIGInstance struct {
	nvml.MIGInstance
	// Parent is the GPU the instance is on.
	Parent nvml.Device
}

// MIGInstances are the node's MIG instances, by device name.
type MIGInstances map[string]MIGInstance

// MIGDeviceName is the name of a MIG instance's device:
// "gpu-<index>-mig-<gpu instance>-<compute instance>".
func MIGDeviceName(index, gi, ci int) string {
	return DeviceName(index) + "-mig-" + strconv.Itoa(gi) + "-" + strconv.Itoa(ci)
}

// NewMIGInstances gathers the MIG instances of the GPUs in MIG mode.
func NewMIGInstances(devs []nvml.Device) MIGInstances {
	out := MIGInstances{}
	for _, d := range devs {
		if !d.MIG.Current {
			continue
		}
		for _, in := range d.MIG.Instances {
			out[MIGDeviceName(d.Index, in.GPUInstanceID, in.ComputeInstanceID)] = MIGInstance{MIGInstance: in, Parent: d}
		}
	}
	return out
}

// MIGDevices describes each instance as a device of its own, in name
// order: held whole by one claim (no capacity is shared), with its
// profile, memory, SMs, GPU and compute instance IDs and its GPU's UUID,
// for a DeviceClass of MIG instances (kind "mig") and selectors on them.
func MIGDevices(m MIGInstances, sys nvml.SystemInfo) []resourceapi.Device {
	out := make([]resourceapi.Device, 0, len(m))
	for _, name := range slices.Sorted(maps.Keys(m)) {
		in := m[name]
		g := device(singleGPU(in), in.Parent, sys)
		attrs := g.Attributes
		delete(attrs, AttrSlices)
		delete(attrs, AttrSliceMemory)
		attrs[AttrUUID] = resourceapi.DeviceAttribute{StringValue: ref(in.UUID)}
		attrs[AttrKind] = resourceapi.DeviceAttribute{StringValue: ref(KindMIG)}
		attrs[AttrParentUUID] = resourceapi.DeviceAttribute{StringValue: ref(in.Parent.UUID)}
		attrs[AttrProfile] = resourceapi.DeviceAttribute{StringValue: ref(in.Profile)}
		attrs[AttrMemory] = resourceapi.DeviceAttribute{IntValue: ref(int64(in.MemoryBytes))}
		attrs[AttrMultiprocessors] = resourceapi.DeviceAttribute{IntValue: ref(int64(in.Multiprocessors))}
		attrs[AttrGPUInstanceID] = resourceapi.DeviceAttribute{IntValue: ref(int64(in.GPUInstanceID))}
		attrs[AttrComputeInstanceID] = resourceapi.DeviceAttribute{IntValue: ref(int64(in.ComputeInstanceID))}
		out = append(out, resourceapi.Device{
			Name:       name,
			Attributes: attrs,
			Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
				CapacityMemory: {Value: *resource.NewQuantity(int64(in.MemoryBytes), resource.BinarySI)},
			},
		})
	}
	return out
}

// singleGPU is an instance's GPU as the layout would describe a GPU of one
// slice, for the attributes a MIG device shares with a GPU's.
func singleGPU(in MIGInstance) vgpu.GPUSlices {
	return vgpu.GPUSlices{GPU: vgpu.GPU{UUID: in.Parent.UUID, Index: in.Parent.Index, Model: in.Parent.Model}, Slices: 1, SliceMemoryBytes: in.MemoryBytes}
}

// migGrant is what a claim holds of a MIG instance: all of it, as a GPU
// of one slice named by the instance's UUID.
func migGrant(r resourceapi.DeviceRequestAllocationResult, in MIGInstance) (Grant, error) {
	g := Grant{UUID: in.UUID, Index: in.Parent.Index, Parent: in.Parent.UUID, MIGProfile: in.Profile,
		SlicesTotal: 1, MemoryCapacity: in.MemoryBytes}
	switch {
	case r.AdminAccess != nil && *r.AdminAccess:
		g.Admin = true
	case len(r.ConsumedCapacity) > 0:
		return Grant{}, fmt.Errorf("%w: %s is a MIG instance, held whole, not shared by capacity", ErrBadCapacity, r.Device)
	default:
		g.Whole, g.Slices, g.MemoryBytes, g.ComputeRatio = true, 1, in.MemoryBytes, 1
	}
	return g, nil
}

// MIGNodes are the device nodes a container of a MIG instance gets,
// beside the control nodes: its GPU's and its capability nodes.
type MIGNodes struct {
	// Minor is its GPU's /dev/nvidia<minor>.
	Minor int
	// GICap and CICap are its /dev/nvidia-caps/nvidia-cap<minor> nodes.
	GICap, CICap int
}

// Nodes returns each instance's device nodes, by its UUID, for Nodes.MIG.
func (m MIGInstances) Nodes() map[string]MIGNodes {
	out := make(map[string]MIGNodes, len(m))
	for _, in := range m {
		out[in.UUID] = MIGNodes{Minor: in.Parent.Minor, GICap: in.GICapMinor, CICap: in.CICapMinor}
	}
	return out
}
