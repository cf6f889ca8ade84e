// Package nodeconfig is the one configuration of gpuslice's two node
// binaries, gpu-agent and gpu-dra-driver: one versioned file format both
// read (apiVersion gpuslice.io/v1alpha1, kind NodeConfig), the flags they
// share under one name with one default and one help text, and the checks
// of what they share (GPU backend, slicing with its per-model rules, GPU
// health, kubelet paths, logs). Each binary adds its own flags and checks;
// a setting both take is declared here and nowhere else, so the two can
// never read the same file or the same setting differently.
package nodeconfig

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// The file format. Kind AgentConfig is the earlier name of the same
// format, read as NodeConfig.
const (
	APIVersion = "gpuslice.io/v1alpha1"
	Kind       = "NodeConfig"
	KindAgent  = "AgentConfig"
)

// Config is everything either node binary can be told, by flags or by the
// YAML file named with --config. Field names in YAML are the json tags.
// The settings both binaries take are at the top level (GPU backend,
// slicing, health, logs, kubelet paths, the DRA record); gpu-agent's own
// are at the top level too, as they were before the driver read the file;
// gpu-dra-driver's own are under draDriver.
type Config struct {
	// APIVersion and Kind name the file's format. A file without them is
	// refused, so a later format can never be read as this one.
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
	// ConfigFile is the --config file; not a key of the file.
	ConfigFile string `json:"-"`

	// Settings both binaries take.
	GPUBackend  string `json:"gpuBackend,omitempty"`
	FakeConfig  string `json:"fakeConfig,omitempty"`
	NVMLLibrary string `json:"nvmlLibrary,omitempty"`
	NodeName    string `json:"nodeName,omitempty"`
	SysfsRoot   string `json:"sysfsRoot,omitempty"`
	// Kubeconfig (or the in-cluster config when empty) gives the binary
	// its Kubernetes client.
	Kubeconfig         string            `json:"kubeconfig,omitempty"`
	ResourceName       string            `json:"resourceName,omitempty"`
	PodResourcesSocket string            `json:"podResourcesSocket,omitempty"`
	Slicing            SlicingConfig     `json:"slicing"`
	DeviceSpecs        DeviceSpecsConfig `json:"deviceSpecs"`
	DRA                DRAConfig         `json:"dra"`
	Health             HealthConfig      `json:"health"`
	// MIGStrategy says which front end serves the MIG instances on GPUs
	// in MIG mode: the device plugin, under NVIDIA's strategies' names
	// (mixed: nvidia.com/mig-<profile>; single: nvidia.com/gpu), the DRA
	// driver as devices of their own (dra), or none (another component
	// serves them). A GPU in MIG mode is never cut into whole-GPU slices,
	// whatever it says.
	MIGStrategy string    `json:"migStrategy,omitempty"`
	Log         LogConfig `json:"log"`

	// gpu-agent's own settings.
	DevicePluginDir string `json:"devicePluginDir,omitempty"`
	MetricsAddress  string `json:"metricsAddress,omitempty"`
	// HealthAddress serves the agent's /healthz and /readyz apart from
	// /metrics, for the kubelet's probes; empty serves them only on
	// MetricsAddress.
	HealthAddress string `json:"healthAddress,omitempty"`
	WebConfigFile string `json:"webConfigFile,omitempty"`
	// MetricsAuth is none, or kubernetes: /metrics asks the API server to
	// authenticate and authorize each scraper's bearer token.
	MetricsAuth    string            `json:"metricsAuth,omitempty"`
	Enforcement    EnforcementConfig `json:"enforcement"`
	SampleInterval Duration          `json:"sampleInterval,omitempty"`
	ProcRoot       string            `json:"procRoot,omitempty"`
	CgroupRoot     string            `json:"cgroupRoot,omitempty"`
	// RuntimeStateDirs hold the container runtimes' OCI bundles, which
	// name each container ID's container.
	RuntimeStateDirs []string `json:"runtimeStateDirs,omitempty"`
	NodeLabels       bool     `json:"nodeLabels"`
	GFDLabels        bool     `json:"gfdLabels"`
	// GFDSharedProduct appends GFD's "-SHARED" to nvidia.com/gpu.product.
	GFDSharedProduct bool `json:"gfdSharedProduct,omitempty"`
	// MachineTypeFile names the machine for nvidia.com/gpu.machine; empty
	// reads <sysfs root>/class/dmi/id/product_name, as GFD does.
	MachineTypeFile string `json:"machineTypeFile,omitempty"`
	Placement       string `json:"placement,omitempty"`
	// Span is what the device plugin does with a container's request no
	// one GPU can hold: "fewest" spans the fewest GPUs, "never" refuses
	// it and holds free slices back for SpanHoldBack (doubling up to five
	// minutes), so the scheduler does not send it back at once.
	Span         string       `json:"span,omitempty"`
	SpanHoldBack Duration     `json:"spanHoldBack,omitempty"`
	CDI          CDIConfig    `json:"cdi"`
	MPS          MPSConfig    `json:"mps"`
	Driver       DriverConfig `json:"draDriver"`
}

// DriverConfig is gpu-dra-driver's own settings.
type DriverConfig struct {
	// HealthAddress serves the driver's /healthz and /readyz; empty for
	// none.
	HealthAddress string `json:"healthAddress,omitempty"`
	// RegistrarDir is where the kubelet discovers plugins; PluginDir holds
	// the driver's socket.
	RegistrarDir string `json:"registrarDir,omitempty"`
	PluginDir    string `json:"pluginDir,omitempty"`
	// CDIDir is where claims' CDI specs are written for the runtime.
	CDIDir string `json:"cdiDir,omitempty"`
	// KubeAPIQPS and KubeAPIBurst bound the driver's API requests: each
	// Prepare reads its claim, and client-go's default of 5 a second makes
	// a node's burst of pods wait 200 ms per claim.
	KubeAPIQPS   float64 `json:"kubeAPIQPS,omitempty"`
	KubeAPIBurst int     `json:"kubeAPIBurst,omitempty"`
	// Taints is the effect an unhealthy GPU's device taint takes, by
	// cause.
	Taints TaintsConfig `json:"taints"`
	// Sizes are the sizes, in slices, of the sized devices the driver
	// publishes besides each GPU: as many devices of k slices as fit it,
	// so that a DeviceClass per size can map "<resource>-<k>: 1" to k
	// slices of one GPU.
	Sizes []int `json:"sizes,omitempty"`
}

// CheckSizes reports the first size the driver cannot publish: each is 2
// (one slice is a slice device) to 1024, at most 16 of them, none twice.
func CheckSizes(sizes []int) error {
	if len(sizes) > 16 {
		return fmt.Errorf("--sized-devices: %d sizes, at most 16", len(sizes))
	}
	seen := map[int]bool{}
	for _, k := range sizes {
		if k < 2 || k > 1024 || seen[k] {
			return fmt.Errorf("--sized-devices: size %d is under 2, over 1024 or given twice", k)
		}
		seen[k] = true
	}
	return nil
}

// IntList is a comma-separated list of whole numbers as a flag.
type IntList []int

// String implements flag.Value.
func (l *IntList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(*l))
	for i, x := range *l {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

// Set implements flag.Value.
func (l *IntList) Set(v string) error {
	out := IntList{}
	for _, f := range SplitList(v) {
		x, err := strconv.Atoi(f)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", f)
		}
		out = append(out, x)
	}
	*l = out
	return nil
}

// TaintsConfig is the effect of the DRA driver's taint on an unhealthy
// GPU's device: NoExecute (its claims' pods are evicted), NoSchedule (new
// claims avoid it) or None (reported only).
type TaintsConfig struct {
	// FatalEffect is for a GPU lost from the bus or with an XID in
	// FatalXIDs since it was last healthy.
	FatalEffect string `json:"fatalEffect,omitempty"`
	// RecoverableEffect is for any other unhealthy GPU.
	RecoverableEffect string   `json:"recoverableEffect,omitempty"`
	FatalXIDs         []uint64 `json:"fatalXIDs,omitempty"`
}

// DRAConfig is how the two binaries share claims of gpuslice's DRA driver.
type DRAConfig struct {
	// Enabled makes the agent account for, limit and report the
	// containers holding claims, alongside device-plugin slices.
	Enabled bool `json:"enabled"`
	// PreparedClaims is the driver's record of what each claim holds: the
	// driver writes it, the agent reads it.
	PreparedClaims string `json:"preparedClaims,omitempty"`
	// ExtendedResource leaves the extended resource to DRA: the driver
	// publishes each slice as a device too, the DeviceClass that maps the
	// resource serves pods asking for it, and the agent advertises no
	// slices.
	ExtendedResource bool `json:"extendedResource,omitempty"`
}

// EnforcementConfig controls how the agent holds containers to their
// shares.
type EnforcementConfig struct {
	// Mode is best-effort (a tier that cannot engage on the node is
	// reported, and slices are still offered) or required (then the node
	// offers no slices: every one is Unhealthy, with the reason).
	Mode string `json:"mode,omitempty"`
	// Compute turns the compute throttle on.
	Compute bool `json:"compute"`
	// Policy is burst or strict, for every container.
	Policy string `json:"policy,omitempty"`
	// Period is the throttle period.
	Period Duration `json:"period,omitempty"`
	// MinRun is the throttle period's length per throttled container: a
	// GPU's period is at least n×MinRun with n throttled. 0 turns it off.
	MinRun Duration `json:"minRun,omitempty"`
	// MinTurn is the shortest turn a container sharing a MIG instance
	// gets in each period: the period is made long enough for it, up to
	// 40 periods. 0 lays the turns in the throttle period.
	MinTurn Duration `json:"minTurn,omitempty"`
	// StateFile records throttled containers so a restarted agent thaws them.
	StateFile string `json:"stateFile,omitempty"`
	// MemoryPolicy is kill, log or off, for containers over their GPU memory.
	MemoryPolicy string `json:"memoryPolicy,omitempty"`
	// DriverMemoryLimits uses the driver's per-cgroup GPU memory limits
	// where the driver and host have them (r615+, cgroup v2).
	DriverMemoryLimits bool `json:"driverMemoryLimits"`
	// PodComputePolicy is what a pod's gpuslice.io/compute-policy
	// annotation may do: allow, stricter-only or ignore.
	PodComputePolicy string `json:"podComputePolicy,omitempty"`
	// UnauthorizedGPUUse is kill, freeze or log, for processes in pods
	// using GPUs their containers hold no slice of.
	UnauthorizedGPUUse string `json:"unauthorizedGPUUse,omitempty"`
	// UnauthorizedExemptNamespaces may use GPUs without slices (e.g. the
	// namespace of DCGM); their use is only reported.
	UnauthorizedExemptNamespaces []string `json:"unauthorizedExemptNamespaces,omitempty"`
}

// LogConfig configures a binary's logs.
type LogConfig struct {
	Level  string `json:"level,omitempty"`
	Format string `json:"format,omitempty"`
}

// SlicingConfig says how GPUs are cut: slicesPerGPU or sliceMemory, with
// optional per-model overrides keyed by NVML product name. Both binaries
// cut the node's GPUs by it, so a slice means the same to both.
// MIGProfiles cuts the MIG instances of the profiles it names (keyed by
// profile name, "3g.40gb") into slices of their own resource
// (nvidia.com/vgpu-mig-<profile>), under the mixed MIG strategy.
type SlicingConfig struct {
	SlicesPerGPU int                  `json:"slicesPerGPU,omitempty"`
	SliceMemory  string               `json:"sliceMemory,omitempty"`
	Models       map[string]SliceRule `json:"models,omitempty"`
	MIGProfiles  map[string]SliceRule `json:"migProfiles,omitempty"`
}

// SliceRule is one model's slicing.
type SliceRule struct {
	SlicesPerGPU int    `json:"slicesPerGPU,omitempty"`
	SliceMemory  string `json:"sliceMemory,omitempty"`
}

// DeviceSpecsConfig controls device nodes: the agent's in Allocate
// responses, the driver's in claims' CDI specs (DevRoot).
type DeviceSpecsConfig struct {
	Enabled bool   `json:"enabled"`
	DevRoot string `json:"devRoot,omitempty"`
}

// CDIConfig controls CDI device names in Allocate responses.
type CDIConfig struct {
	Enabled      bool   `json:"enabled"`
	Kind         string `json:"kind,omitempty"`
	NameStrategy string `json:"nameStrategy,omitempty"`
}

// MPSConfig controls MPS limits in Allocate responses.
type MPSConfig struct {
	Enabled       bool   `json:"enabled"`
	PipeDirectory string `json:"pipeDirectory,omitempty"`
}

// HealthConfig controls GPU health checking on real NVML.
type HealthConfig struct {
	ProbeInterval Duration `json:"probeInterval,omitempty"`
	XIDRecovery   Duration `json:"xidRecovery,omitempty"`
	IgnoredXIDs   []uint64 `json:"ignoredXIDs,omitempty"`
}

// Duration is a time.Duration written as "5s" or "2m" in YAML.
type Duration struct{ time.Duration }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"5s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Default is the configuration before any file or flag; getenv gives
// NODE_NAME.
func Default(getenv func(string) string) Config {
	dp := deviceplugin.DefaultOptions()
	nv := nvml.DefaultOptions()
	eo := enforce.DefaultOptions()
	return Config{
		GPUBackend:         "nvml",
		NodeName:           getenv(contract.EnvNodeName),
		SysfsRoot:          nv.SysfsRoot,
		ResourceName:       dp.ResourceName,
		PodResourcesSocket: contract.PodResourcesSocket,
		DeviceSpecs:        DeviceSpecsConfig{Enabled: dp.DeviceSpecs, DevRoot: dp.DevRoot},
		DRA:                DRAConfig{PreparedClaims: contract.DRAPreparedClaims},
		Health: HealthConfig{
			ProbeInterval: Duration{nv.ProbeInterval},
			XIDRecovery:   Duration{nv.XIDRecovery},
			IgnoredXIDs:   nv.IgnoredXIDs,
		},
		Log: LogConfig{Level: "info", Format: "text"},

		DevicePluginDir: dp.PluginDir,
		MetricsAddress:  ":9445",
		HealthAddress:   ":9447",
		SampleInterval:  Duration{time.Second},
		Enforcement: EnforcementConfig{
			Mode:               ModeBestEffort,
			Compute:            true,
			Policy:             string(enforce.Burst),
			Period:             Duration{eo.Period},
			MinRun:             Duration{eo.MinRun},
			MinTurn:            Duration{eo.MinTurn},
			StateFile:          eo.State.Path,
			MemoryPolicy:       string(enforce.MemoryKill),
			DriverMemoryLimits: true,
			PodComputePolicy:   string(enforce.PodPoliciesStricterOnly),
			UnauthorizedGPUUse: string(enforce.UnauthorizedKill),
		},
		RuntimeStateDirs: contract.RuntimeStateDirs(),
		CgroupRoot:       contract.CgroupRoot,
		ProcRoot:         contract.ProcRoot,
		NodeLabels:       true,
		GFDLabels:        true,
		MetricsAuth:      "none",
		Placement:        string(dp.Placement),
		Span:             dp.Span,
		SpanHoldBack:     Duration{dp.SpanHoldBack},
		MIGStrategy:      "mixed",
		CDI:              CDIConfig{Kind: dp.CDI.Kind, NameStrategy: dp.CDI.NameStrategy},
		MPS:              MPSConfig{PipeDirectory: dp.MPS.PipeDirectory},
		Driver: DriverConfig{
			HealthAddress: ":9448",
			RegistrarDir:  contract.KubeletDir + "/plugins_registry",
			PluginDir:     contract.KubeletDir + "/plugins/" + contract.DRADriverName,
			CDIDir:        "/var/run/cdi",
			KubeAPIQPS:    50,
			KubeAPIBurst:  100,
			Taints: TaintsConfig{FatalEffect: "NoExecute", RecoverableEffect: "NoSchedule",
				FatalXIDs: append([]uint64(nil), nvml.DefaultFatalXIDs...)},
		},
	}
}

// The values of enforcement.mode (--enforcement).
const (
	ModeBestEffort = "best-effort"
	ModeRequired   = "required"
)

// SharedFlags binds the flags both binaries take to c's fields; defaults
// are c's current values. Each binary binds its own --health-address:
// their probes listen on ports of their own.
func SharedFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.ConfigFile, "config", c.ConfigFile, "YAML config `file` (kind NodeConfig, one file for gpu-agent and gpu-dra-driver); flags given explicitly override it")
	fs.StringVar(&c.GPUBackend, "gpu-backend", c.GPUBackend, "GPU backend: nvml, or fake for the built-in fake GPU node")
	fs.StringVar(&c.FakeConfig, "fake-config", c.FakeConfig, "fake GPU node YAML `file` (with --gpu-backend=fake; default: 4×A100-40GB); its faults are re-read when it changes")
	fs.StringVar(&c.NVMLLibrary, "nvml-library", c.NVMLLibrary, "NVML library `path` (default: libnvidia-ml.so.1 from the library path)")
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "this node's name (default $NODE_NAME)")
	fs.StringVar(&c.SysfsRoot, "sysfs-root", c.SysfsRoot, "where sysfs is mounted, for GPUs' NUMA nodes")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig `file`; in-cluster config when empty")
	fs.StringVar(&c.ResourceName, "resource-name", c.ResourceName, "the device plugin's extended resource `name`")
	fs.StringVar(&c.PodResourcesSocket, "pod-resources-socket", c.PodResourcesSocket, "the kubelet's pod-resources `socket`: which containers hold which slices and claims")
	fs.IntVar(&c.Slicing.SlicesPerGPU, "slices-per-gpu", c.Slicing.SlicesPerGPU, fmt.Sprintf("cut every GPU into `n` slices (default %d unless --slice-memory); per-model rules only in the --config file", vgpu.DefaultSlicesPerGPU))
	fs.StringVar(&c.Slicing.SliceMemory, "slice-memory", c.Slicing.SliceMemory, "cut every GPU into slices of this much `memory`, e.g. 10Gi; not with --slices-per-gpu")
	fs.StringVar(&c.DeviceSpecs.DevRoot, "dev-root", c.DeviceSpecs.DevRoot, "host `dir` holding the NVIDIA device nodes")
	fs.StringVar(&c.DRA.PreparedClaims, "dra-prepared-claims", c.DRA.PreparedClaims, "the DRA driver's record of prepared claims (`file`): gpu-dra-driver writes it, gpu-agent --dra reads it")
	fs.BoolVar(&c.DRA.ExtendedResource, "dra-extended-resource", c.DRA.ExtendedResource, "leave the extended resource to DRA: gpu-dra-driver publishes each slice as a device too, for the DeviceClass that maps the resource, and gpu-agent (with --dra) advertises no slices")
	fs.StringVar(&c.MIGStrategy, "mig-strategy", c.MIGStrategy, "which front end serves MIG instances: the device plugin as mixed (nvidia.com/mig-<profile>) or single (nvidia.com/gpu; every GPU in MIG mode with one profile), dra (gpu-dra-driver publishes them as devices), or none (another component serves them)")
	fs.DurationVar(&c.Health.ProbeInterval.Duration, "health-probe-interval", c.Health.ProbeInterval.Duration, "how often each GPU is probed for loss and recovery (real NVML)")
	fs.DurationVar(&c.Health.XIDRecovery.Duration, "xid-recovery", c.Health.XIDRecovery.Duration, "quiet time after an XID before a GPU is healthy again (0: never)")
	fs.Var((*xidList)(&c.Health.IgnoredXIDs), "ignored-xids", "comma-separated XIDs that leave a GPU healthy (application errors, not the GPU's)")
	fs.StringVar(&c.Log.Level, "log-level", c.Log.Level, "log level: debug, info, warn or error")
	fs.StringVar(&c.Log.Format, "log-format", c.Log.Format, "log format: text or json")
}

// XIDList is a comma-separated list of XIDs as a flag value.
type XIDList = xidList

// xidList is a comma-separated list of XIDs as a flag.
type xidList []uint64

// String implements flag.Value.
func (l *xidList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(*l))
	for i, x := range *l {
		s[i] = strconv.FormatUint(x, 10)
	}
	return strings.Join(s, ",")
}

// Set implements flag.Value.
func (l *xidList) Set(v string) error {
	out := xidList{}
	for _, f := range SplitList(v) {
		x, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return fmt.Errorf("XID %q is not a number", f)
		}
		out = append(out, x)
	}
	*l = out
	return nil
}

// Load builds a binary's configuration from args and getenv: the
// defaults, then the --config file, then the flags given explicitly.
// flags binds the binary's flags (SharedFlags among them) to a Config.
// It checks the file's format, not the values: that is Check's and the
// binary's.
func Load(args []string, getenv func(string) string, flags func(*Config) *flag.FlagSet) (Config, error) {
	cfg := Default(getenv)
	if err := parse(flags(&cfg), &cfg, args); err != nil {
		return Config{}, err
	}
	if cfg.ConfigFile == "" {
		return cfg, nil
	}
	fromFile := Default(getenv)
	data, err := os.ReadFile(cfg.ConfigFile)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	if err := yaml.UnmarshalStrict(data, &fromFile); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", cfg.ConfigFile, err)
	}
	if fromFile.APIVersion != APIVersion || (fromFile.Kind != Kind && fromFile.Kind != KindAgent) {
		return Config{}, fmt.Errorf("config %s: apiVersion %q, kind %q: want apiVersion: %s and kind: %s", cfg.ConfigFile, fromFile.APIVersion, fromFile.Kind, APIVersion, Kind)
	}
	if err := parse(flags(&fromFile), &fromFile, args); err != nil {
		return Config{}, err
	}
	return fromFile, nil
}

func parse(fs *flag.FlagSet, c *Config, args []string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	// A slicing flag replaces the file's slicing mode rather than mixing
	// with it; giving both flags is left for Check to refuse.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["slices-per-gpu"] && !set["slice-memory"] {
		c.Slicing.SliceMemory = ""
	}
	if set["slice-memory"] && !set["slices-per-gpu"] {
		c.Slicing.SlicesPerGPU = 0
	}
	return nil
}

// Check checks the settings both binaries take; it reports the first that
// cannot work, naming its flag.
func (c Config) Check() error {
	switch c.GPUBackend {
	case gpubackend.NVML:
		if c.FakeConfig != "" {
			return errors.New("--fake-config needs --gpu-backend=fake")
		}
	case gpubackend.Fake:
		if err := gpubackend.CheckFakeFile(c.FakeConfig); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--gpu-backend %q: want nvml or fake", c.GPUBackend)
	}
	if _, err := c.SliceRules(); err != nil {
		return fmt.Errorf("slicing: %w", err)
	}
	if c.Health.ProbeInterval.Duration <= 0 {
		return fmt.Errorf("--health-probe-interval %s must be positive", c.Health.ProbeInterval)
	}
	if !slices.Contains(deviceplugin.MIGStrategies, c.MIGStrategy) {
		return fmt.Errorf("--mig-strategy %q: want one of %s", c.MIGStrategy, strings.Join(deviceplugin.MIGStrategies, ", "))
	}
	if c.Health.XIDRecovery.Duration < 0 {
		return fmt.Errorf("--xid-recovery %s must not be negative", c.Health.XIDRecovery)
	}
	if _, err := c.LogLevel(); err != nil {
		return err
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return fmt.Errorf("--log-format %q: want text or json", c.Log.Format)
	}
	return CheckPaths(
		Path{"--nvml-library", c.NVMLLibrary, true},
		Path{"--kubeconfig", c.Kubeconfig, true},
		Path{"--sysfs-root", c.SysfsRoot, false},
		Path{"--pod-resources-socket", c.PodResourcesSocket, false},
		Path{"--dev-root", c.DeviceSpecs.DevRoot, false},
		Path{"--dra-prepared-claims", c.DRA.PreparedClaims, false},
	)
}

// Path is a path setting to check: named by its flag, and Optional when
// empty means unset.
type Path struct {
	Flag     string
	Path     string
	Optional bool
}

// CheckPaths reports the first path that is not absolute.
func CheckPaths(paths ...Path) error {
	for _, p := range paths {
		if (p.Path != "" || !p.Optional) && !filepath.IsAbs(p.Path) {
			return fmt.Errorf("%s %q must be an absolute path", p.Flag, p.Path)
		}
	}
	return nil
}

// SliceRules is how the GPUs are cut: the default rule (the default count
// of slices when neither count nor size is set) and each model's.
func (c Config) SliceRules() (vgpu.Config, error) {
	def, err := rule(c.Slicing.SlicesPerGPU, c.Slicing.SliceMemory)
	if err != nil {
		return vgpu.Config{}, fmt.Errorf("--slice-memory (slicing.sliceMemory): %w", err)
	}
	if def == (vgpu.Rule{}) {
		def.SlicesPerGPU = vgpu.DefaultSlicesPerGPU
	}
	out := vgpu.Config{Default: def, Models: map[string]vgpu.Rule{}}
	for model, r := range c.Slicing.Models {
		mr, err := rule(r.SlicesPerGPU, r.SliceMemory)
		if err != nil {
			return vgpu.Config{}, fmt.Errorf("model %q: sliceMemory: %w", model, err)
		}
		out.Models[model] = mr
	}
	for profile, r := range c.Slicing.MIGProfiles {
		if !gpudev.ValidMIGProfileName(profile) {
			return vgpu.Config{}, fmt.Errorf("slicing.migProfiles: %q is not a MIG profile name (like 3g.40gb or 1g.10gb+me)", profile)
		}
		mr, err := rule(r.SlicesPerGPU, r.SliceMemory)
		if err != nil {
			return vgpu.Config{}, fmt.Errorf("MIG profile %q: sliceMemory: %w", profile, err)
		}
		if out.MIGProfiles == nil {
			out.MIGProfiles = map[string]vgpu.Rule{}
		}
		out.MIGProfiles[profile] = mr
	}
	return out, out.Validate()
}

func rule(slices int, mem string) (vgpu.Rule, error) {
	r := vgpu.Rule{SlicesPerGPU: slices}
	if mem != "" {
		b, err := vgpu.ParseSize(mem)
		if err != nil {
			return vgpu.Rule{}, err
		}
		r.SliceMemoryBytes = b
	}
	return r, nil
}

// LogLevel is the level Log.Level names.
func (c Config) LogLevel() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.Log.Level)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.Log.Level)
	}
	return l, nil
}

// Logger is a logger writing to w at Log's level and format; c must have
// passed Check.
func (c Config) Logger(w io.Writer) *slog.Logger {
	level, _ := c.LogLevel()
	o := &slog.HandlerOptions{Level: level}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// NVMLOptions are the GPU backend's options: library, health and sysfs.
func (c Config) NVMLOptions() nvml.Options {
	o := nvml.DefaultOptions()
	o.LibraryPath = c.NVMLLibrary
	o.ProbeInterval = c.Health.ProbeInterval.Duration
	o.XIDRecovery = c.Health.XIDRecovery.Duration
	o.IgnoredXIDs = c.Health.IgnoredXIDs
	o.SysfsRoot = c.SysfsRoot
	return o
}

// SplitList splits a comma-separated flag value, dropping empty items.
func SplitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
