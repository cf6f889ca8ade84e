package contract

import "strings"

// The MIG strategies (--mig-strategy): which front end serves the MIG
// instances, named as NVIDIA's device plugin names its strategies, plus
// gpuslice's DRA driver.
const (
	// MIGStrategyMixed offers each profile's instances as
	// nvidia.com/mig-<profile> (the device plugin).
	MIGStrategyMixed = "mixed"
	// MIGStrategySingle offers every instance as nvidia.com/gpu (the
	// device plugin); every GPU on the node is in MIG mode with one profile.
	MIGStrategySingle = "single"
	// MIGStrategyDRA leaves the instances to gpuslice's DRA driver, which
	// publishes each as a device of its own.
	MIGStrategyDRA = "dra"
	// MIGStrategyNone serves no instance: another component (NVIDIA's
	// device plugin) does, or nobody.
	MIGStrategyNone = "none"
)

// MIGDeviceClass is the DeviceClass of the DRA driver's MIG instances.
const MIGDeviceClass = "mig.gpuslice.io"

// MIGResourcePrefix begins the resource name of each MIG profile under
// the mixed strategy, as NVIDIA's device plugin names them.
const MIGResourcePrefix = "nvidia.com/mig-"

// MIGSingleResource is the resource every MIG instance is offered under
// with the single strategy.
const MIGSingleResource = "nvidia.com/gpu"

// MIGResource is the mixed strategy's resource name for a MIG profile:
// "nvidia.com/mig-1g.10gb". A '+' (as in "1g.10gb+me") cannot be part of
// a resource or label name, so it becomes '.', as NVIDIA's device plugin
// writes it.
func MIGResource(profile string) string {
	return MIGResourcePrefix + strings.ReplaceAll(profile, "+", ".")
}

// MIGSliceResource is the resource the slices of a MIG profile's
// instances are offered under: the slice resource (base, nvidia.com/vgpu),
// "-mig-" and the profile, a "+" written "." as in MIGResource:
// nvidia.com/vgpu-mig-3g.40gb. One resource per profile: its slices are of
// one size on the node, which the name tells a pod.
func MIGSliceResource(base, profile string) string {
	return base + "-mig-" + strings.ReplaceAll(profile, "+", ".")
}

// IsSliceResource reports whether a resource's device IDs are slice IDs:
// the slice resource (base) itself, or the slices of a MIG profile's
// instances (MIGSliceResource).
func IsSliceResource(base, name string) bool {
	return name == base || strings.HasPrefix(name, base+"-mig-")
}
