package fakegpu

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

const mib = 1 << 20

// MaxGPUs is the most GPUs a fake node may have.
const MaxGPUs = 16

// Preset is a GPU model the fake knows by name.
type Preset struct {
	// Model is the product name NVML would report.
	Model string
	// MemoryMiB is the framebuffer NVML would report, in MiB.
	MemoryMiB uint64
	// ComputeCapability is "major.minor".
	ComputeCapability string
	// MIGCapable is whether the model supports MIG.
	MIGCapable bool
}

// Presets are the models a Config may name. Memory sizes are what NVML
// reports on real boards, not the marketing sizes.
var presets = map[string]Preset{
	"A100-40GB":  {Model: "NVIDIA A100-SXM4-40GB", MemoryMiB: 40960, ComputeCapability: "8.0", MIGCapable: true},
	"A100-80GB":  {Model: "NVIDIA A100-SXM4-80GB", MemoryMiB: 81920, ComputeCapability: "8.0", MIGCapable: true},
	"H100-80GB":  {Model: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, ComputeCapability: "9.0", MIGCapable: true},
	"H200-141GB": {Model: "NVIDIA H200", MemoryMiB: 143771, ComputeCapability: "9.0", MIGCapable: true},
}

// PresetNames returns the names of the known presets, sorted.
func PresetNames() []string {
	names := make([]string, 0, len(presets))
	for n := range presets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Config describes a fake node. Either Preset and Count, or GPUs.
type Config struct {
	// Preset names the model of every GPU, e.g. "A100-40GB".
	Preset string `json:"preset,omitempty"`
	// Count is how many GPUs of the preset the node has (1..16).
	Count int `json:"count,omitempty"`
	// GPUs lists GPUs one by one, for mixed nodes; their order is their
	// index. An empty list ("gpus: []") is a node whose driver is loaded
	// and sees no GPU.
	GPUs []GPUConfig `json:"gpus,omitempty"`
	// Seed makes UUIDs unique per fake node; two nodes with the same seed
	// have the same UUIDs. Default "gpuslice-fake".
	Seed string `json:"seed,omitempty"`
	// DriverVersion is the driver version to report. Default "570.124.06".
	DriverVersion string `json:"driverVersion,omitempty"`
	// CUDAVersion is the CUDA driver version to report, "major.minor".
	// Default "12.8".
	CUDAVersion string `json:"cudaVersion,omitempty"`
	// Faults are the faults in force.
	Faults Faults `json:"faults,omitempty"`
	// WorkloadDir is where fake GPU workload processes publish their state
	// (see WorkloadState); empty means the node has no workloads.
	WorkloadDir string `json:"workloadDir,omitempty"`
	// DriverMemoryLimits gives the fake driver per-cgroup GPU memory limits
	// (nvmlDeviceSetMemoryLimits_v1, r615 and later): a workload whose
	// allocation would take its cgroup past the hard limit is refused, as
	// CUDA refuses it with out-of-memory.
	DriverMemoryLimits bool `json:"driverMemoryLimits,omitempty"`
}

// GPUConfig describes one GPU of an explicit list.
type GPUConfig struct {
	// Preset fills the fields below that are left empty.
	Preset string `json:"preset,omitempty"`
	// Model is the product name.
	Model string `json:"model,omitempty"`
	// MemoryMiB is the framebuffer size in MiB.
	MemoryMiB uint64 `json:"memoryMiB,omitempty"`
	// ComputeCapability is "major.minor".
	ComputeCapability string `json:"computeCapability,omitempty"`
	// UUID overrides the generated UUID.
	UUID string `json:"uuid,omitempty"`
	// NUMANode is the GPU's NUMA node; absent means unknown.
	NUMANode *int `json:"numaNode,omitempty"`
	// MIGCapable says whether the GPU supports MIG; absent takes the
	// preset's (false without one).
	MIGCapable *bool `json:"migCapable,omitempty"`
	// MIG is its MIG mode and instances; MIG needs a MIG-capable GPU, and
	// instances a preset with MIG profiles (see MIGProfiles).
	MIG MIGConfig `json:"mig,omitempty"`
}

// Faults are faults in force on a node, by GPU index.
type Faults struct {
	// GPUs lists GPUs with a fault.
	GPUs []GPUFault `json:"gpus,omitempty"`
	// FailCalls lists backend calls that fail: "devices", "system",
	// "watchHealth", "sample", "processes".
	FailCalls []string `json:"failCalls,omitempty"`
}

// GPUFault is a fault on one GPU: an XID that made it unhealthy, or loss.
type GPUFault struct {
	// Index is the GPU's index.
	Index int `json:"index"`
	// XID, when non-zero, is a critical XID the GPU reported.
	XID uint64 `json:"xid,omitempty"`
	// Lost marks the GPU as fallen off the bus.
	Lost bool `json:"lost,omitempty"`
	// GPUInstance, with XID, puts the XID on this GPU instance of a GPU
	// in MIG mode (its ID, as nvidia-smi lists it) rather than on the
	// GPU: only that instance is unhealthy, as when the driver contains
	// an error to one instance.
	GPUInstance *int `json:"gpuInstance,omitempty"`
}

// Backend calls that FailCalls may name.
const (
	CallDevices     = "devices"
	CallSystem      = "system"
	CallWatchHealth = "watchHealth"
	CallSample      = "sample"
	CallProcesses   = "processes"
)

// calls lists every call FailCalls may name, in a stable order.
var calls = []string{CallDevices, CallSystem, CallWatchHealth, CallSample, CallProcesses}

// DefaultConfig is the node gpu-agent --gpu-backend=fake uses without
// --fake-config: four A100-40GB GPUs.
func DefaultConfig() Config {
	return Config{Preset: "A100-40GB", Count: 4}
}

// PresetConfig is a node of count GPUs of the named preset.
func PresetConfig(preset string, count int) Config {
	return Config{Preset: preset, Count: count}
}

// LoadFile reads a Config from a YAML file. Unknown fields are errors.
func LoadFile(path string) (Config, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the path is the operator's own --fake-config
	if err != nil {
		return Config{}, fmt.Errorf("read fake GPU config: %w", err)
	}
	return Parse(data)
}

// Parse reads a Config from YAML and validates it.
func Parse(data []byte) (Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("parse fake GPU config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("fake GPU config: %w", err)
	}
	return c, nil
}

// Validate checks the config describes a buildable node.
func (c Config) Validate() error {
	if _, err := c.gpus(); err != nil {
		return err
	}
	if _, err := c.cudaVersion(); err != nil {
		return err
	}
	return c.Faults.validate(c.count())
}

func (c Config) count() int {
	if len(c.GPUs) > 0 {
		return len(c.GPUs)
	}
	return c.Count
}

func (f Faults) validate(n int) error {
	seen := map[int]bool{}
	for _, g := range f.GPUs {
		if g.Index < 0 || g.Index >= n {
			return fmt.Errorf("fault on gpu %d: node has gpus 0..%d", g.Index, n-1)
		}
		if seen[g.Index] {
			return fmt.Errorf("gpu %d has two faults listed", g.Index)
		}
		seen[g.Index] = true
		if g.XID == 0 && !g.Lost {
			return fmt.Errorf("fault on gpu %d: set xid or lost", g.Index)
		}
		if g.GPUInstance != nil && (g.XID == 0 || g.Lost) {
			return fmt.Errorf("fault on gpu %d: gpuInstance needs an xid, and a lost GPU loses every instance", g.Index)
		}
	}
	for _, c := range f.FailCalls {
		if !slices.Contains(calls, c) {
			return fmt.Errorf("failCalls: unknown call %q (want one of %s)", c, strings.Join(calls, ", "))
		}
	}
	return nil
}

// gpuSpec is a fully resolved GPU.
type gpuSpec struct {
	uuid        string
	model       string
	memoryBytes uint64
	ccMajor     int
	ccMinor     int
	numaNode    int
	mig         bool
	migState    nvml.MIG
	preset      string
}

// list is the node's GPUs as configured: one by one, or count of a
// preset; none for "gpus: []".
func (c Config) list() ([]GPUConfig, error) {
	var list []GPUConfig
	switch {
	case len(c.GPUs) > 0 && (c.Preset != "" || c.Count != 0):
		return nil, errors.New("set preset and count, or gpus, not both")
	case len(c.GPUs) > 0:
		list = c.GPUs
	case c.GPUs != nil && c.Preset == "" && c.Count == 0:
		return nil, nil // "gpus: []": a driver that sees no GPU
	case c.Preset == "":
		return nil, fmt.Errorf("set preset (one of %s) and count, or gpus", strings.Join(PresetNames(), ", "))
	default:
		if c.Count < 1 || c.Count > MaxGPUs {
			return nil, fmt.Errorf("count %d is outside 1..%d", c.Count, MaxGPUs)
		}
		for range c.Count {
			list = append(list, GPUConfig{Preset: c.Preset})
		}
	}
	if len(list) > MaxGPUs {
		return nil, fmt.Errorf("%d gpus listed, at most %d", len(list), MaxGPUs)
	}
	return list, nil
}

func (c Config) gpus() ([]gpuSpec, error) {
	list, err := c.list()
	if err != nil || list == nil {
		return nil, err
	}
	seed := c.Seed
	if seed == "" {
		seed = "gpuslice-fake"
	}
	out := make([]gpuSpec, 0, len(list))
	uuids := map[string]bool{}
	for i, g := range list {
		mig := false
		if g.Preset != "" {
			p, ok := presets[g.Preset]
			if !ok {
				return nil, fmt.Errorf("gpu %d: unknown preset %q (want one of %s)", i, g.Preset, strings.Join(PresetNames(), ", "))
			}
			if g.Model == "" {
				g.Model = p.Model
			}
			if g.MemoryMiB == 0 {
				g.MemoryMiB = p.MemoryMiB
			}
			if g.ComputeCapability == "" {
				g.ComputeCapability = p.ComputeCapability
			}
			mig = p.MIGCapable
		}
		if g.MIGCapable != nil {
			mig = *g.MIGCapable
		}
		if g.Model == "" || g.MemoryMiB == 0 || g.ComputeCapability == "" {
			return nil, fmt.Errorf("gpu %d: set a preset, or model, memoryMiB and computeCapability", i)
		}
		var s gpuSpec
		if _, err := fmt.Sscanf(g.ComputeCapability, "%d.%d", &s.ccMajor, &s.ccMinor); err != nil || s.ccMajor <= 0 || s.ccMinor < 0 {
			return nil, fmt.Errorf("gpu %d: compute capability %q is not major.minor", i, g.ComputeCapability)
		}
		s.model, s.memoryBytes, s.mig, s.preset = g.Model, g.MemoryMiB*mib, mig, g.Preset
		s.numaNode = -1
		if g.NUMANode != nil {
			if *g.NUMANode < 0 || *g.NUMANode > 63 {
				return nil, fmt.Errorf("gpu %d: numaNode %d is outside 0..63", i, *g.NUMANode)
			}
			s.numaNode = *g.NUMANode
		}
		s.uuid = g.UUID
		if s.uuid == "" {
			s.uuid = fakeUUID(seed, i)
		}
		var err error
		if s.migState, err = migLayout(g.Preset, s.uuid, i, s.memoryBytes, s.mig, g.MIG); err != nil {
			return nil, fmt.Errorf("gpu %d: %w", i, err)
		}
		if uuids[s.uuid] {
			return nil, fmt.Errorf("gpu %d: duplicate uuid %s", i, s.uuid)
		}
		uuids[s.uuid] = true
		out = append(out, s)
	}
	return out, nil
}

// fakeUUID derives a stable NVML-shaped UUID from a seed and an index.
func fakeUUID(seed string, index int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s/%d", seed, index))
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

func (c Config) cudaVersion() (int, error) {
	v := c.CUDAVersion
	if v == "" {
		v = "12.8"
	}
	var major, minor int
	if _, err := fmt.Sscanf(v, "%d.%d", &major, &minor); err != nil || major <= 0 || minor < 0 || minor > 99 {
		return 0, fmt.Errorf("cudaVersion %q is not major.minor", v)
	}
	return major*1000 + minor*10, nil
}
