package fakegpu

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// MIGConfig is a GPU's MIG mode and the instances an administrator
// created on it (by hand, mig-parted or the GPU Operator's MIG manager).
type MIGConfig struct {
	// Mode is the MIG mode in force: "enabled" or "disabled" (default).
	Mode string `json:"mode,omitempty"`
	// Pending is the mode that takes force at the GPU's next reset;
	// empty means the same as Mode.
	Pending string `json:"pending,omitempty"`
	// Instances are the MIG devices, one compute instance filling each
	// GPU instance, in creation order. Only with Mode "enabled".
	Instances []MIGInstanceConfig `json:"instances,omitempty"`
}

// MIGInstanceConfig is one GPU instance with one compute instance that
// fills it.
type MIGInstanceConfig struct {
	// Profile is the GPU instance profile, e.g. "1g.10gb"; one of the
	// GPU model's (see MIGProfiles).
	Profile string `json:"profile"`
	// Placement is the first memory slice it occupies; absent takes the
	// first free one the profile allows, as nvidia-smi does.
	Placement *int `json:"placement,omitempty"`
}

// MIGProfile is one GPU instance profile of a GPU model, as NVIDIA's MIG
// user guide lists it.
type MIGProfile struct {
	// Name is the profile's published name, e.g. "1g.5gb".
	Name string
	// ComputeSlices are its sevenths of the GPU's compute ("g").
	ComputeSlices int
	// MemorySlices are its eighths of the GPU's memory.
	MemorySlices int
	// Multiprocessors is its SM count.
	Multiprocessors int
	// CopyEngines, Decoders, JPEGDecoders and OFAs are its engines.
	CopyEngines  int
	Decoders     int
	JPEGDecoders int
	OFAs         int
	// Max is how many instances of it one GPU can hold.
	Max int
	// Placements are the memory slices an instance may start at.
	Placements []int
	// MediaExtensions marks the "+me" profiles.
	MediaExtensions bool
}

// migMemorySlices is the number of memory slices of every MIG-capable
// preset (A100, H100, H200); compute has seven.
const (
	migMemorySlices  = 8
	migComputeSlices = 7
)

// The profile tables of NVIDIA's MIG user guide ("Supported MIG
// Profiles"): fraction of memory and SMs, engines, copy engines, the most
// instances and the placements `nvidia-smi mig -lgipp` lists. The 80 GB
// A100's profiles are the 40 GB one's with twice the memory.
func a100Profiles(gb int) []MIGProfile {
	n := func(g, mem int, me bool) string {
		s := fmt.Sprintf("%dg.%dgb", g, mem*gb/migMemorySlices)
		if me {
			s += "+me"
		}
		return s
	}
	return []MIGProfile{
		{Name: n(1, 1, false), ComputeSlices: 1, MemorySlices: 1, Multiprocessors: 14, CopyEngines: 1, Max: 7, Placements: []int{0, 1, 2, 3, 4, 5, 6}},
		{Name: n(1, 1, true), ComputeSlices: 1, MemorySlices: 1, Multiprocessors: 14, CopyEngines: 1, Decoders: 1, JPEGDecoders: 1, OFAs: 1, Max: 1, Placements: []int{0, 1, 2, 3, 4, 5, 6}, MediaExtensions: true},
		{Name: n(1, 2, false), ComputeSlices: 1, MemorySlices: 2, Multiprocessors: 14, CopyEngines: 1, Decoders: 1, Max: 4, Placements: []int{0, 2, 4, 6}},
		{Name: n(2, 2, false), ComputeSlices: 2, MemorySlices: 2, Multiprocessors: 28, CopyEngines: 2, Decoders: 1, Max: 3, Placements: []int{0, 2, 4}},
		{Name: n(3, 4, false), ComputeSlices: 3, MemorySlices: 4, Multiprocessors: 42, CopyEngines: 3, Decoders: 2, Max: 2, Placements: []int{0, 4}},
		{Name: n(4, 4, false), ComputeSlices: 4, MemorySlices: 4, Multiprocessors: 56, CopyEngines: 4, Decoders: 2, Max: 1, Placements: []int{0}},
		{Name: n(7, 8, false), ComputeSlices: 7, MemorySlices: 8, Multiprocessors: 98, CopyEngines: 7, Decoders: 5, JPEGDecoders: 1, OFAs: 1, Max: 1, Placements: []int{0}},
	}
}

// hopperProfiles are H100's and H200's: the same shapes, named by the
// board's memory (gb: GiB of one memory slice, rounded as NVIDIA rounds).
func hopperProfiles(names [5]string) []MIGProfile {
	return []MIGProfile{
		{Name: names[0], ComputeSlices: 1, MemorySlices: 1, Multiprocessors: 16, CopyEngines: 1, Decoders: 1, JPEGDecoders: 1, Max: 7, Placements: []int{0, 1, 2, 3, 4, 5, 6}},
		{Name: names[0] + "+me", ComputeSlices: 1, MemorySlices: 1, Multiprocessors: 16, CopyEngines: 1, Decoders: 1, JPEGDecoders: 1, OFAs: 1, Max: 1, Placements: []int{0, 1, 2, 3, 4, 5, 6}, MediaExtensions: true},
		{Name: "1g." + strings.TrimPrefix(names[1], "2g."), ComputeSlices: 1, MemorySlices: 2, Multiprocessors: 16, CopyEngines: 1, Decoders: 1, JPEGDecoders: 1, Max: 4, Placements: []int{0, 2, 4, 6}},
		{Name: names[1], ComputeSlices: 2, MemorySlices: 2, Multiprocessors: 32, CopyEngines: 2, Decoders: 2, JPEGDecoders: 2, Max: 3, Placements: []int{0, 2, 4}},
		{Name: names[2], ComputeSlices: 3, MemorySlices: 4, Multiprocessors: 60, CopyEngines: 3, Decoders: 3, JPEGDecoders: 3, Max: 2, Placements: []int{0, 4}},
		{Name: names[3], ComputeSlices: 4, MemorySlices: 4, Multiprocessors: 64, CopyEngines: 4, Decoders: 4, JPEGDecoders: 4, Max: 1, Placements: []int{0}},
		{Name: names[4], ComputeSlices: 7, MemorySlices: 8, Multiprocessors: 132, CopyEngines: 8, Decoders: 7, JPEGDecoders: 7, OFAs: 1, Max: 1, Placements: []int{0}},
	}
}

// migProfiles are the MIG profile tables by preset.
var migProfiles = map[string][]MIGProfile{
	"A100-40GB":  a100Profiles(40),
	"A100-80GB":  a100Profiles(80),
	"H100-80GB":  hopperProfiles([5]string{"1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"}),
	"H200-141GB": hopperProfiles([5]string{"1g.18gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"}),
}

// MIGProfiles returns the MIG profiles of a preset, or nil for a preset
// without MIG.
func MIGProfiles(preset string) []MIGProfile {
	return slices.Clone(migProfiles[preset])
}

// migProfile finds a profile of a preset by name.
func migProfile(preset, name string) (MIGProfile, bool) {
	for _, p := range migProfiles[preset] {
		if p.Name == name {
			return p, true
		}
	}
	return MIGProfile{}, false
}

func parseMode(field, s string) (bool, error) {
	switch s {
	case "enabled":
		return true, nil
	case "", "disabled":
		return false, nil
	}
	return false, fmt.Errorf("%s %q: want enabled or disabled", field, s)
}

// migLayout checks a GPU's MIG config against its preset's profiles and
// placement rules and returns the MIG state NVML would report.
func migLayout(preset string, gpuUUID string, gpuIndex int, memoryBytes uint64, capable bool, c MIGConfig) (nvml.MIG, error) {
	var out nvml.MIG
	var err error
	if out.Current, err = parseMode("mig mode", c.Mode); err != nil {
		return out, err
	}
	out.Pending = out.Current
	if c.Pending != "" {
		if out.Pending, err = parseMode("mig pending", c.Pending); err != nil {
			return out, err
		}
	}
	if out.Enabled() && !capable {
		return out, fmt.Errorf("mig mode on a GPU that is not MIG-capable")
	}
	if len(c.Instances) > 0 && !out.Current {
		return out, fmt.Errorf("mig instances need mig mode enabled")
	}
	if len(c.Instances) > 0 && len(migProfiles[preset]) == 0 {
		return out, fmt.Errorf("mig instances need a preset with MIG profiles (%s)", strings.Join(migPresets(), ", "))
	}
	compute, count := 0, map[string]int{}
	profiles := make([]MIGProfile, len(c.Instances))
	for i, ic := range c.Instances {
		p, ok := migProfile(preset, ic.Profile)
		if !ok {
			return out, fmt.Errorf("mig instance %d: %s has no profile %q (want one of %s)", i, preset, ic.Profile, strings.Join(profileNames(preset), ", "))
		}
		if count[p.Name]++; count[p.Name] > p.Max {
			return out, fmt.Errorf("mig instance %d: at most %d of %s on one GPU", i, p.Max, p.Name)
		}
		if p.MediaExtensions && countMedia(count, preset) > 1 {
			return out, fmt.Errorf("mig instance %d: at most one +me instance on one GPU", i)
		}
		if compute += p.ComputeSlices; compute > migComputeSlices {
			return out, fmt.Errorf("mig instance %d: %s needs %d compute slices, %d of %d are left", i, p.Name, p.ComputeSlices, migComputeSlices-compute+p.ComputeSlices, migComputeSlices)
		}
		if a := ic.Placement; a != nil && !slices.Contains(p.Placements, *a) {
			return out, fmt.Errorf("mig instance %d (%s): placement %d is not one of %v", i, p.Name, *a, p.Placements)
		}
		profiles[i] = p
	}
	starts := make([]int, len(c.Instances))
	var used [migMemorySlices]bool
	if !place(profiles, c.Instances, starts, &used, 0) {
		return out, fmt.Errorf("mig instances %s do not fit the GPU's memory slices together at any placements their profiles allow", describeInstances(c.Instances))
	}
	for i, p := range profiles {
		out.Instances = append(out.Instances, migInstance(p, gpuUUID, gpuIndex, memoryBytes, i, starts[i]))
	}
	return out, nil
}

func countMedia(count map[string]int, preset string) int {
	n := 0
	for _, p := range migProfiles[preset] {
		if p.MediaExtensions {
			n += count[p.Name]
		}
	}
	return n
}

// place finds each instance's first memory slice from instance i on: the
// asked placement, or the first one its profile allows that leaves room
// for the rest, as the driver finds room for a layout mig-parted applies.
func place(profiles []MIGProfile, asked []MIGInstanceConfig, starts []int, used *[migMemorySlices]bool, i int) bool {
	if i == len(profiles) {
		return true
	}
	p := profiles[i]
	candidates := p.Placements
	if asked[i].Placement != nil {
		candidates = []int{*asked[i].Placement}
	}
	for _, start := range candidates {
		if start+p.MemorySlices > migMemorySlices || slices.Contains(used[start:start+p.MemorySlices], true) {
			continue
		}
		for s := start; s < start+p.MemorySlices; s++ {
			used[s] = true
		}
		starts[i] = start
		if place(profiles, asked, starts, used, i+1) {
			return true
		}
		for s := start; s < start+p.MemorySlices; s++ {
			used[s] = false
		}
	}
	return false
}

func describeInstances(in []MIGInstanceConfig) string {
	names := make([]string, len(in))
	for i, ic := range in {
		names[i] = ic.Profile
		if ic.Placement != nil {
			names[i] += fmt.Sprintf("@%d", *ic.Placement)
		}
	}
	return strings.Join(names, ", ")
}

// migInstance is the MIG device NVML reports for an instance: its memory
// is a little under its eighths of the GPU's, as the driver keeps some.
func migInstance(p MIGProfile, gpuUUID string, gpuIndex int, memoryBytes uint64, i, start int) nvml.MIGInstance {
	mem := memoryBytes / migMemorySlices * uint64(p.MemorySlices) / 100 * 98 / mib * mib
	gi := i + 1
	return nvml.MIGInstance{
		UUID:  migUUID(gpuUUID, gi, 0),
		Index: i, GPUInstanceID: gi, ComputeInstanceID: 0,
		Profile:     nvml.MIGProfileName(p.ComputeSlices, p.ComputeSlices, mem, memoryBytes, p.MediaExtensions),
		GIProfileID: giProfileID(p), Placement: start, PlacementSize: p.MemorySlices, MemoryBytes: mem, Multiprocessors: p.Multiprocessors,
		GISlices: p.ComputeSlices, CISlices: p.ComputeSlices,
		CopyEngines: p.CopyEngines, Decoders: p.Decoders, JPEGDecoders: p.JPEGDecoders, OFAs: p.OFAs,
		GICapMinor: MIGCapMinor(gpuIndex, gi, -1), CICapMinor: MIGCapMinor(gpuIndex, gi, 0),
	}
}

// giProfileID is NVML's GPU instance profile ID of a profile
// (NVML_GPU_INSTANCE_PROFILE_*): by compute slices, with REV1 for media
// extensions and REV2 for a one-slice profile with two memory slices.
func giProfileID(p MIGProfile) int {
	switch {
	case p.ComputeSlices == 1 && p.MediaExtensions:
		return 7
	case p.ComputeSlices == 1 && p.MemorySlices == 2:
		return 9
	}
	return map[int]int{1: 0, 2: 1, 3: 2, 4: 3, 7: 4}[p.ComputeSlices]
}

// MIGCapMinor is the minor number the NVIDIA driver gives the access
// capability of a GPU instance (ci < 0) or of a compute instance in it, as
// /proc/driver/nvidia-caps/mig-minors lists them: "config" is 1,
// "monitor" 2, then per GPU 15 GPU instances of one access entry and 8
// compute-instance entries each.
func MIGCapMinor(gpu, gi, ci int) int {
	base := 3 + gpu*15*9 + gi*9
	if ci < 0 {
		return base
	}
	return base + 1 + ci
}

// MIGMinorsFile renders /proc/driver/nvidia-caps/mig-minors for n GPUs.
func MIGMinorsFile(n int) string {
	var b strings.Builder
	b.WriteString("config 1\nmonitor 2\n")
	for g := range n {
		for gi := range 15 {
			fmt.Fprintf(&b, "gpu%d/gi%d/access %d\n", g, gi, MIGCapMinor(g, gi, -1))
			for ci := range 8 {
				fmt.Fprintf(&b, "gpu%d/gi%d/ci%d/access %d\n", g, gi, ci, MIGCapMinor(g, gi, ci))
			}
		}
	}
	return b.String()
}

func migPresets() []string {
	var out []string
	for _, n := range PresetNames() {
		if len(migProfiles[n]) > 0 {
			out = append(out, n)
		}
	}
	return out
}

func profileNames(preset string) []string {
	var out []string
	for _, p := range migProfiles[preset] {
		out = append(out, p.Name)
	}
	return out
}

// SetMIG changes GPU index's MIG mode and instances at run time, as an
// administrator (or mig-parted) would. A layout the GPU cannot hold is
// refused and the old one stays.
func (n *Node) SetMIG(index int, c MIGConfig) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if index < 0 || index >= len(n.devices) {
		return fmt.Errorf("gpu %d: node has gpus 0..%d", index, len(n.devices)-1)
	}
	d := &n.devices[index]
	m, err := migLayout(n.presets[index], d.UUID, index, d.MemoryBytes, d.MIGCapable, c)
	if err != nil {
		return fmt.Errorf("gpu %d: %w", index, err)
	}
	n.migGeneration++
	d.MIG = keepInstances(d.MIG, m, d.UUID, index, n.migGeneration)
	n.notifyLocked()
	return nil
}

// keepInstances makes a new layout what the driver would make of the
// change: an instance of the old layout with the same profile and
// placement survives it, with its IDs and UUID; the others are created
// anew, with the lowest free GPU-instance IDs and new UUIDs (a destroyed
// instance's UUID never comes back).
func keepInstances(old, m nvml.MIG, gpuUUID string, gpuIndex, generation int) nvml.MIG {
	if !old.Current || !m.Current {
		return m
	}
	used := map[int]bool{}
	kept := make([]bool, len(m.Instances))
	taken := make([]bool, len(old.Instances))
	for i, in := range m.Instances {
		for j, o := range old.Instances {
			if !taken[j] && o.Profile == in.Profile && o.Placement == in.Placement {
				idx := in.Index
				m.Instances[i] = o
				m.Instances[i].Index = idx
				kept[i], taken[j], used[o.GPUInstanceID] = true, true, true
				break
			}
		}
	}
	next := 1
	for i := range m.Instances {
		if kept[i] {
			continue
		}
		for used[next] {
			next++
		}
		used[next] = true
		in := &m.Instances[i]
		in.GPUInstanceID = next
		in.UUID = migUUID(gpuUUID, next, generation)
		in.GICapMinor, in.CICapMinor = MIGCapMinor(gpuIndex, next, -1), MIGCapMinor(gpuIndex, next, 0)
	}
	return m
}

// migUUID derives a stable MIG-shaped UUID from the GPU, the GPU instance
// and the layout's generation (0 for the layout the node was built with).
func migUUID(gpuUUID string, gi, generation int) string {
	key := fmt.Sprintf("%s/gi%d", gpuUUID, gi)
	if generation > 0 {
		key += fmt.Sprintf("/%d", generation)
	}
	h := sha256.Sum256([]byte(key))
	return fmt.Sprintf("MIG-%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}
