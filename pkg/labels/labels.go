package labels

import (
	"sort"
	"strconv"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Prefixes of the labels the agent owns.
const (
	// GFDPrefix labels are the ones NVIDIA's GPU Feature Discovery writes.
	GFDPrefix = "nvidia.com/"
	// OwnPrefix labels are gpuslice's own.
	OwnPrefix = "gpuslice.io/"
)

// Options choose what to label.
type Options struct {
	// GFD writes the GFD-compatible set. Turn it off where GFD runs.
	GFD bool
	// Enforcement is the enforcement mode to advertise, e.g. "freezer".
	Enforcement string
	// MPS says the GPUs are shared through MPS rather than by time.
	MPS bool
	// SharedProduct appends "-SHARED" to nvidia.com/gpu.product, as GFD
	// does for a GPU shared without renaming its resource. Off by
	// default: gpuslice offers its own resource (nvidia.com/vgpu), so the
	// product label keeps naming the physical GPU and affinity on it keeps
	// working unchanged.
	SharedProduct bool
	// GPUMode is nvidia.com/gpu.mode ("compute", "graphics" or
	// "unknown"; see GPUMode); empty leaves the label out.
	GPUMode string
	// Machine is the machine's product name, as GFD reads it from
	// /sys/class/dmi/id/product_name; empty labels it "unknown".
	Machine string
	// MIGStrategy is how MIG instances are offered ("mixed", "single",
	// "dra", "none"); empty writes no MIG labels beyond mig.capable.
	MIGStrategy string
}

// GPUMode is GFD's nvidia.com/gpu.mode from the GPUs' PCI classes, as
// sysfs gives them ("0x030200" is a 3D controller, a GPU in compute mode;
// "0x030000" a VGA controller, in graphics mode): the first GPU's, or
// "unknown".
func GPUMode(classes []string) string {
	if len(classes) == 0 {
		return "unknown"
	}
	switch strings.ToLower(strings.TrimSpace(classes[0])) {
	case "0x030200":
		return "compute"
	case "0x030000":
		return "graphics"
	}
	return "unknown"
}

// For returns the labels for a node with the given GPUs, driver and
// slicing. GPUs are described by the most common model (ties go to the
// lowest index), as GFD describes a node by one product; a node with
// several models also gets gpuslice.io/gpu.mixed=true and a
// gpuslice.io/gpu.count.<model> label per model.
func For(devs []nvml.Device, sys nvml.SystemInfo, layout *vgpu.Layout, opts Options) map[string]string {
	out := map[string]string{}
	if len(devs) == 0 {
		return out
	}
	sorted := append([]nvml.Device(nil), devs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Index < sorted[j].Index })
	count := map[string]int{}
	for _, d := range sorted {
		count[d.Model]++
	}
	main := sorted[0]
	for _, d := range sorted {
		if count[d.Model] > count[main.Model] {
			main = d
		}
	}
	if opts.GFD {
		gfdGPU(out, main, sorted, layout, opts)
		gfdDriver(out, sys)
		gfdMIG(out, sorted, opts.MIGStrategy)
	}
	if g, ok := layout.GPU(main.UUID); ok {
		out[OwnPrefix+"slices-per-gpu"] = strconv.Itoa(g.Slices)
		out[OwnPrefix+"slice-memory"] = strconv.FormatUint(g.SliceMemoryBytes>>20, 10) + "Mi"
	}
	out[OwnPrefix+"slices"] = strconv.Itoa(layout.TotalSlices())
	if opts.Enforcement != "" {
		out[OwnPrefix+"enforcement"] = Value(opts.Enforcement)
	}
	if len(count) > 1 {
		out[OwnPrefix+"gpu.mixed"] = "true"
		for model, n := range count {
			key := OwnPrefix + "gpu.count." + Value(strings.ReplaceAll(model, " ", "-"))
			if len(key)-len(OwnPrefix) <= 63 {
				out[key] = strconv.Itoa(n)
			}
		}
	}
	return out
}

// gfdGPU writes GFD's labels of the GPUs: the main model's product,
// memory and compute capability, the count, sharing, MIG and MPS, the
// mode and the machine.
func gfdGPU(out map[string]string, main nvml.Device, sorted []nvml.Device, layout *vgpu.Layout, opts Options) {
	product := strings.ReplaceAll(main.Model, " ", "-")
	if opts.SharedProduct {
		product += "-SHARED"
	}
	out["nvidia.com/gpu.product"] = Value(product)
	out["nvidia.com/gpu.memory"] = strconv.FormatUint(main.MemoryBytes>>20, 10)
	out["nvidia.com/gpu.count"] = strconv.Itoa(len(sorted))
	out["nvidia.com/gpu.family"] = Family(main.ComputeMajor, main.ComputeMinor)
	out["nvidia.com/gpu.compute.major"] = strconv.Itoa(main.ComputeMajor)
	out["nvidia.com/gpu.compute.minor"] = strconv.Itoa(main.ComputeMinor)
	replicas := 1
	if g, ok := layout.GPU(main.UUID); ok {
		replicas = g.Slices
	}
	out["nvidia.com/gpu.replicas"] = strconv.Itoa(replicas)
	switch {
	case opts.MPS:
		out["nvidia.com/gpu.sharing-strategy"] = "mps"
	case replicas > 1:
		out["nvidia.com/gpu.sharing-strategy"] = "time-slicing"
	default:
		out["nvidia.com/gpu.sharing-strategy"] = "none"
	}
	migCapable := false
	for _, d := range sorted {
		migCapable = migCapable || d.MIGCapable
	}
	out["nvidia.com/mig.capable"] = strconv.FormatBool(migCapable)
	out["nvidia.com/mps.capable"] = strconv.FormatBool(opts.MPS)
	if opts.GPUMode != "" {
		out["nvidia.com/gpu.mode"] = Value(opts.GPUMode)
	}
	machine := strings.ReplaceAll(strings.TrimSpace(opts.Machine), " ", "-")
	if Value(machine) == "" {
		machine = "unknown"
	}
	out["nvidia.com/gpu.machine"] = Value(machine)
}

// gfdMIG writes GFD's MIG labels: the strategy, and for each profile of
// the instances in force its count, memory (MiB), multiprocessors, slices
// and engines, and its product ("<model>-MIG-<profile>"), under the
// profile's mixed-strategy resource name.
func gfdMIG(out map[string]string, sorted []nvml.Device, strategy string) {
	if strategy == "" {
		return
	}
	out["nvidia.com/mig.strategy"] = strategy
	if strategy == contract.MIGStrategyNone {
		return
	}
	count := map[string]int{}
	for _, d := range sorted {
		if !d.MIG.Current {
			continue
		}
		for _, in := range d.MIG.Instances {
			p := contract.MIGResource(in.Profile)
			count[p]++
			out[p+".count"] = strconv.Itoa(count[p])
			out[p+".memory"] = strconv.FormatUint(in.MemoryBytes>>20, 10)
			out[p+".multiprocessors"] = strconv.Itoa(in.Multiprocessors)
			out[p+".slices.gi"] = strconv.Itoa(in.GISlices)
			out[p+".slices.ci"] = strconv.Itoa(in.CISlices)
			out[p+".engines.copy"] = strconv.Itoa(in.CopyEngines)
			out[p+".engines.decoder"] = strconv.Itoa(in.Decoders)
			out[p+".engines.encoder"] = strconv.Itoa(in.Encoders)
			out[p+".engines.jpeg"] = strconv.Itoa(in.JPEGDecoders)
			out[p+".engines.ofa"] = strconv.Itoa(in.OFAs)
			out[p+".product"] = Value(strings.ReplaceAll(d.Model, " ", "-") + "-MIG-" + strings.ReplaceAll(in.Profile, "+", "."))
		}
	}
}

// gfdDriver writes GFD's labels of the driver and its CUDA version, with
// the deprecated names GFD still writes.
func gfdDriver(out map[string]string, sys nvml.SystemInfo) {
	if parts := strings.Split(sys.DriverVersion, "."); sys.DriverVersion != "" {
		out["nvidia.com/cuda.driver-version.full"] = Value(sys.DriverVersion)
		keys := []string{"major", "minor", "revision"}
		old := []string{"major", "minor", "rev"} // GFD's deprecated cuda.driver.*
		for i, p := range parts {
			if i < len(keys) {
				out["nvidia.com/cuda.driver-version."+keys[i]] = Value(p)
				out["nvidia.com/cuda.driver."+old[i]] = Value(p)
			}
		}
	}
	if sys.CUDADriverVersion > 0 {
		major, minor := strconv.Itoa(sys.CUDADriverVersion/1000), strconv.Itoa(sys.CUDADriverVersion%1000/10)
		out["nvidia.com/cuda.runtime-version.major"] = major
		out["nvidia.com/cuda.runtime-version.minor"] = minor
		out["nvidia.com/cuda.runtime-version.full"] = sys.CUDAVersion()
		out["nvidia.com/cuda.runtime.major"] = major // deprecated by GFD, still read
		out["nvidia.com/cuda.runtime.minor"] = minor
	}
}

// Family names a GPU architecture from its compute capability, as GFD does.
func Family(major, minor int) string {
	switch {
	case major == 10 || major == 12:
		return "blackwell"
	case major == 9:
		return "hopper"
	case major == 8 && minor == 9:
		return "ada-lovelace"
	case major == 8:
		return "ampere"
	case major == 7 && minor == 5:
		return "turing"
	case major == 7:
		return "volta"
	case major == 6:
		return "pascal"
	case major == 5:
		return "maxwell"
	case major == 3:
		return "kepler"
	}
	return "undefined"
}

// Value makes s a valid Kubernetes label value: at most 63 characters of
// [A-Za-z0-9._-], beginning and ending with an alphanumeric. Other
// characters become '-'; an empty result stays empty.
func Value(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !alnum(rune(c)) && c != '.' && c != '_' && c != '-' {
			b[i] = '-'
		}
	}
	v := string(b)
	if len(v) > 63 {
		v = v[:63]
	}
	return strings.TrimFunc(v, func(r rune) bool { return !alnum(r) })
}

func alnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// Patch returns the changes that bring current to desired, as a map for a
// JSON merge patch of metadata.labels: a new or changed label maps to its
// value, a stale one to nil. A label is stale when the agent owns it (it
// has an owned prefix and the GFD set is on, or it is a gpuslice.io label)
// and desired lacks it; labels the agent does not own are never removed.
// An empty result means nothing to do.
func Patch(current, desired map[string]string, gfd bool) map[string]any {
	out := map[string]any{}
	for k, v := range desired {
		if cur, ok := current[k]; !ok || cur != v {
			out[k] = v
		}
	}
	for k := range current {
		if _, keep := desired[k]; keep {
			continue
		}
		if strings.HasPrefix(k, OwnPrefix) || (gfd && owned(k)) {
			out[k] = nil
		}
	}
	return out
}

// owned reports whether k is one of the GFD-compatible labels the agent
// writes, MIG labels included (GFD itself writes more under nvidia.com/,
// which the agent leaves alone).
func owned(k string) bool {
	switch k {
	case "nvidia.com/gpu.replicas", "nvidia.com/gpu.sharing-strategy", "nvidia.com/mig.capable", "nvidia.com/mig.strategy",
		"nvidia.com/mps.capable", "nvidia.com/gpu.mode", "nvidia.com/gpu.machine":
		return true
	}
	return strings.HasPrefix(k, "nvidia.com/gpu.product") || strings.HasPrefix(k, "nvidia.com/gpu.memory") ||
		strings.HasPrefix(k, "nvidia.com/gpu.count") || strings.HasPrefix(k, "nvidia.com/gpu.family") ||
		strings.HasPrefix(k, "nvidia.com/gpu.compute.") || strings.HasPrefix(k, "nvidia.com/cuda.") ||
		strings.HasPrefix(k, contract.MIGResourcePrefix)
}
