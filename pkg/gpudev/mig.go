package gpudev

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// MIG is a GPU's Multi-Instance GPU state: its mode and, while the mode is
// in force, the MIG devices an administrator created on it.
type MIG struct {
	// Current is whether MIG mode is in force now.
	Current bool
	// Pending is the mode that takes force at the GPU's next reset. A GPU
	// whose mode changes at the next reset is in neither state for
	// certain, so gpuslice serves it whole in neither.
	Pending bool
	// Instances are the MIG devices (a compute instance inside a GPU
	// instance), ordered by their index on the GPU; empty unless Current.
	Instances []MIGInstance
}

// Enabled reports whether MIG mode is in force or pending: such a GPU
// cannot be used whole (CUDA sees none of it outside its instances), so
// it is never cut into whole-GPU slices.
func (m MIG) Enabled() bool { return m.Current || m.Pending }

// MIGInstance is one MIG device: what CUDA sees as one GPU, a compute
// instance inside a GPU instance of a physical GPU.
type MIGInstance struct {
	// UUID is NVML's identifier of the MIG device, "MIG-...".
	UUID string
	// Index is NVML's index of the MIG device on its GPU.
	Index int
	// GPUInstanceID and ComputeInstanceID locate it on its GPU.
	GPUInstanceID     int
	ComputeInstanceID int
	// Profile is its profile's name as NVIDIA writes it, e.g. "1g.10gb",
	// "1c.2g.20gb" or "1g.10gb+me".
	Profile string
	// GIProfileID is NVML's ID of its GPU instance profile
	// (NVML_GPU_INSTANCE_PROFILE_*); -1 when unknown.
	GIProfileID int
	// Placement is the first memory slice its GPU instance occupies, and
	// PlacementSize how many it occupies.
	Placement     int
	PlacementSize int
	// MemoryBytes is its framebuffer.
	MemoryBytes uint64
	// Multiprocessors is its SM count.
	Multiprocessors int
	// GISlices and CISlices are the GPU-instance and compute-instance
	// slice counts of its profile (the "g" and "c" of its name).
	GISlices int
	CISlices int
	// CopyEngines, Decoders, Encoders, JPEGDecoders and OFAs are the
	// engines it has.
	CopyEngines  int
	Decoders     int
	Encoders     int
	JPEGDecoders int
	OFAs         int
	// GICapMinor and CICapMinor are the minor numbers of the
	// /dev/nvidia-caps/nvidia-cap<minor> nodes that grant access to its
	// GPU instance and compute instance; -1 when unknown.
	GICapMinor int
	CICapMinor int
}

// MIGProfileName names a MIG profile as NVIDIA's tools do: "<g>g.<gb>gb",
// "<c>c.<g>g.<gb>gb" when the compute instance is smaller than its GPU
// instance, and "+me" for the profiles with media extensions. gb is the
// instance's share of the GPU's memory rounded up to eighths, times the
// GPU's memory in whole GiB rounded up, to the nearest integer: the names
// NVIDIA publishes (1g.5gb on a 40 GB A100, 3g.71gb on an H200) come out
// of the memory sizes NVML reports.
func MIGProfileName(giSlices, ciSlices int, memoryBytes, gpuMemoryBytes uint64, mediaExtensions bool) string {
	gb := 0
	if gpuMemoryBytes > 0 {
		const gib = 1 << 30
		frac := math.Ceil(float64(memoryBytes)/float64(gpuMemoryBytes)*8) / 8
		gb = int(math.Round(frac * float64((gpuMemoryBytes+gib-1)/gib)))
	}
	name := fmt.Sprintf("%dg.%dgb", giSlices, gb)
	if ciSlices != giSlices {
		name = fmt.Sprintf("%dc.%s", ciSlices, name)
	}
	if mediaExtensions {
		name += "+me"
	}
	return name
}

// ValidMIGProfileName reports whether s has the shape of a MIG profile
// name: what may follow "nvidia.com/mig-" in a resource name.
func ValidMIGProfileName(s string) bool {
	base, ext, hasExt := strings.Cut(s, "+")
	if hasExt && ext != "me" {
		return false
	}
	parts := strings.Split(base, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return false
	}
	suffixes := []string{"g", "gb"}
	if len(parts) == 3 {
		suffixes = []string{"c", "g", "gb"}
	}
	for i, p := range parts {
		num, ok := strings.CutSuffix(p, suffixes[i])
		if !ok || num == "" || len(num) > 4 || strings.TrimLeft(num, "0123456789") != "" {
			return false
		}
	}
	return true
}

// Whole returns the GPUs that may be used whole, and so cut into slices:
// those whose MIG mode is neither in force nor pending.
func Whole(devs []Device) []Device {
	out := make([]Device, 0, len(devs))
	for _, d := range devs {
		if !d.MIG.Enabled() {
			out = append(out, d)
		}
	}
	return out
}

// MIGModeChange says which GPU's MIG mode (in force or pending) differs
// between two reads of the GPUs, or "" when none does. A GPU missing from
// one read (lost) is no change.
func MIGModeChange(before, now []Device) string {
	for _, b := range before {
		for _, n := range now {
			if n.UUID == b.UUID && (n.MIG.Current != b.MIG.Current || n.MIG.Pending != b.MIG.Pending) {
				return fmt.Sprintf("gpu %d (%s) MIG mode changed (in force %v -> %v, pending %v -> %v)",
					b.Index, b.UUID, b.MIG.Current, n.MIG.Current, b.MIG.Pending, n.MIG.Pending)
			}
		}
	}
	return ""
}

// MIGInstancesChanged reports whether the MIG instances in force differ
// between two reads, on the GPUs both reads have: a GPU lost from one
// read keeps its instances (offered Unhealthy, as its health says), as a
// lost whole GPU keeps its slices.
func MIGInstancesChanged(before, now []Device) bool {
	ids := func(devs, other []Device) []string {
		var out []string
		for _, d := range devs {
			if !d.MIG.Current || !slices.ContainsFunc(other, func(o Device) bool { return o.UUID == d.UUID }) {
				continue
			}
			for _, in := range d.MIG.Instances {
				out = append(out, fmt.Sprintf("%s/%s/%s/%d/%d", d.UUID, in.UUID, in.Profile, in.GPUInstanceID, in.ComputeInstanceID))
			}
		}
		slices.Sort(out)
		return out
	}
	return !slices.Equal(ids(before, now), ids(now, before))
}

// UUIDs lists the devices' UUIDs, in order.
func UUIDs(devs []Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.UUID
	}
	return out
}

// IsMIGUUID reports whether a UUID names a MIG instance ("MIG-...", as
// NVML names MIG devices) rather than a GPU.
func IsMIGUUID(uuid string) bool { return strings.HasPrefix(uuid, "MIG-") }

// InForce is one MIG instance in force, with the GPU it is on.
type InForce struct {
	MIGInstance
	// Parent is the GPU the instance is on.
	Parent Device
}

// GPUFraction is the share of its physical GPU the instance stands for,
// in (0, 1]: the memory of its GPU instance in eighths of the GPU's,
// rounded up as its profile's name counts them (a 1g.10gb on an H100 is
// 1/8, a 3g.40gb 1/2, a 7g.80gb 1), times the part of that GPU instance's
// compute slices its compute instance has (a 1c.3g.40gb is a third of a
// half). GPU-hour budgets charge the instance's use at this weight. 1
// when a size is unknown: an instance is never charged less than it may
// hold.
func (in InForce) GPUFraction() float64 {
	if in.Parent.MemoryBytes == 0 || in.MemoryBytes == 0 {
		return 1
	}
	f := min(math.Ceil(float64(in.MemoryBytes)/float64(in.Parent.MemoryBytes)*8)/8, 1)
	if in.GISlices > 0 && in.CISlices > 0 && in.CISlices < in.GISlices {
		f *= float64(in.CISlices) / float64(in.GISlices)
	}
	return f
}

// InstancesInForce lists the MIG instances in force on the GPUs, in GPU
// order and then in their order on each GPU: what CUDA can use on GPUs
// in MIG mode, and so what the agent reads as devices of their own.
func InstancesInForce(devs []Device) []InForce {
	var out []InForce
	for _, d := range devs {
		if !d.MIG.Current {
			continue
		}
		for _, in := range d.MIG.Instances {
			out = append(out, InForce{MIGInstance: in, Parent: d})
		}
	}
	return out
}
