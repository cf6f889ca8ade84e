package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/exporter"
	"github.com/gpuslice/gpuslice/pkg/frontend"
	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/sampler"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Config is everything gpu-agent can be told, by flags or by the YAML file
// named with --config. Field names in YAML are the json tags.
type Config struct {
	// APIVersion and Kind name the config file's format: ConfigAPIVersion
	// and ConfigKind. A file without them is refused, so a later format
	// can never be read as this one.
	APIVersion      string `json:"apiVersion,omitempty"`
	Kind            string `json:"kind,omitempty"`
	ConfigFile      string `json:"-"`
	GPUBackend      string `json:"gpuBackend,omitempty"`
	FakeConfig      string `json:"fakeConfig,omitempty"`
	NVMLLibrary     string `json:"nvmlLibrary,omitempty"`
	DevicePluginDir string `json:"devicePluginDir,omitempty"`
	MetricsAddress  string `json:"metricsAddress,omitempty"`
	// HealthAddress serves /healthz and /readyz apart from /metrics, for
	// the kubelet's probes; empty serves them only on MetricsAddress.
	HealthAddress string `json:"healthAddress,omitempty"`
	NodeName      string `json:"nodeName,omitempty"`
	SysfsRoot     string `json:"sysfsRoot,omitempty"`
	WebConfigFile string `json:"webConfigFile,omitempty"`
	// MetricsAuth is none, or kubernetes: /metrics asks the API server to
	// authenticate and authorize each scraper's bearer token.
	MetricsAuth        string            `json:"metricsAuth,omitempty"`
	Enforcement        EnforcementConfig `json:"enforcement"`
	SampleInterval     Duration          `json:"sampleInterval,omitempty"`
	PodResourcesSocket string            `json:"podResourcesSocket,omitempty"`
	ProcRoot           string            `json:"procRoot,omitempty"`
	// Kubeconfig (or the in-cluster config when empty) gives the agent its
	// Kubernetes client, for node labels.
	CgroupRoot string `json:"cgroupRoot,omitempty"`
	// RuntimeStateDirs hold the container runtimes' OCI bundles, which
	// name each container ID's container.
	RuntimeStateDirs []string `json:"runtimeStateDirs,omitempty"`
	Kubeconfig       string   `json:"kubeconfig,omitempty"`
	NodeLabels       bool     `json:"nodeLabels"`
	GFDLabels        bool     `json:"gfdLabels"`
	// GFDSharedProduct appends GFD's "-SHARED" to nvidia.com/gpu.product.
	GFDSharedProduct bool `json:"gfdSharedProduct,omitempty"`
	// MachineTypeFile names the machine for nvidia.com/gpu.machine; empty
	// reads <sysfs root>/class/dmi/id/product_name, as GFD does.
	MachineTypeFile string `json:"machineTypeFile,omitempty"`
	ResourceName    string `json:"resourceName,omitempty"`
	Placement       string `json:"placement,omitempty"`

	Log         LogConfig         `json:"log"`
	Slicing     SlicingConfig     `json:"slicing"`
	DeviceSpecs DeviceSpecsConfig `json:"deviceSpecs"`
	CDI         CDIConfig         `json:"cdi"`
	MPS         MPSConfig         `json:"mps"`
	Health      HealthConfig      `json:"health"`
	DRA         DRAConfig         `json:"dra"`
}

// DRAConfig makes the agent account for, limit and report the containers
// holding claims of gpuslice's DRA driver (gpu-dra-driver), alongside
// device-plugin slices.
type DRAConfig struct {
	Enabled bool `json:"enabled"`
	// PreparedClaims is the driver's record of what each claim holds.
	PreparedClaims string `json:"preparedClaims,omitempty"`
	// ExtendedResource leaves nvidia.com/vgpu to DRA: the device plugin
	// advertises no slices, so the scheduler serves the resource through
	// the DeviceClass that maps it (the driver's slice devices).
	ExtendedResource bool `json:"extendedResource,omitempty"`
}

// EnforcementConfig controls how containers are held to their shares.
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

// LogConfig configures the agent's logs.
type LogConfig struct {
	Level  string `json:"level,omitempty"`
	Format string `json:"format,omitempty"`
}

// SlicingConfig says how GPUs are cut: slicesPerGPU or sliceMemory, with
// optional per-model overrides keyed by NVML product name.
type SlicingConfig struct {
	SlicesPerGPU int                  `json:"slicesPerGPU,omitempty"`
	SliceMemory  string               `json:"sliceMemory,omitempty"`
	Models       map[string]SliceRule `json:"models,omitempty"`
}

// SliceRule is one model's slicing.
type SliceRule struct {
	SlicesPerGPU int    `json:"slicesPerGPU,omitempty"`
	SliceMemory  string `json:"sliceMemory,omitempty"`
}

// DeviceSpecsConfig controls device nodes in Allocate responses.
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

// defaultConfig is the configuration before any file or flag.
func defaultConfig(getenv func(string) string) Config {
	dp := deviceplugin.DefaultOptions()
	nv := nvml.DefaultOptions()
	return Config{
		GPUBackend:      "nvml",
		DevicePluginDir: dp.PluginDir,
		MetricsAddress:  ":9445",
		HealthAddress:   ":9447",
		NodeName:        getenv(contract.EnvNodeName),
		SysfsRoot:       nv.SysfsRoot, SampleInterval: Duration{time.Second},
		Enforcement: EnforcementConfig{
			Mode:               modeBestEffort,
			Compute:            true,
			Policy:             string(enforce.Burst),
			Period:             Duration{enforce.DefaultOptions().Period},
			MinRun:             Duration{enforce.DefaultOptions().MinRun},
			StateFile:          enforce.DefaultOptions().State.Path,
			MemoryPolicy:       string(enforce.MemoryKill),
			DriverMemoryLimits: true,
			PodComputePolicy:   string(enforce.PodPoliciesStricterOnly),
			UnauthorizedGPUUse: string(enforce.UnauthorizedKill),
		},
		RuntimeStateDirs:   contract.RuntimeStateDirs(),
		PodResourcesSocket: contract.PodResourcesSocket,
		CgroupRoot:         contract.CgroupRoot,
		ProcRoot:           contract.ProcRoot,
		NodeLabels:         true,
		GFDLabels:          true,
		MetricsAuth:        "none",
		ResourceName:       dp.ResourceName,
		Placement:          string(dp.Placement),
		Log:                LogConfig{Level: "info", Format: "text"},
		DeviceSpecs:        DeviceSpecsConfig{Enabled: dp.DeviceSpecs, DevRoot: dp.DevRoot},
		CDI:                CDIConfig{Kind: dp.CDI.Kind, NameStrategy: dp.CDI.NameStrategy},
		MPS:                MPSConfig{PipeDirectory: dp.MPS.PipeDirectory},
		DRA:                DRAConfig{PreparedClaims: contract.DRAPreparedClaims},
		Health: HealthConfig{
			ProbeInterval: Duration{nv.ProbeInterval},
			XIDRecovery:   Duration{nv.XIDRecovery},
			IgnoredXIDs:   nv.IgnoredXIDs,
		},
	}
}

// flagSet binds every flag to a field of c. Defaults are c's current
// values, so parsing sets only the flags given.
func flagSet(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("gpu-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.ConfigFile, "config", c.ConfigFile, "YAML config `file`; flags given explicitly override it")
	fs.StringVar(&c.GPUBackend, "gpu-backend", c.GPUBackend, "GPU backend: nvml or fake")
	fs.StringVar(&c.FakeConfig, "fake-config", c.FakeConfig, "fake GPU node YAML `file` (with --gpu-backend=fake; default: 4×A100-40GB); its faults are re-read when it changes")
	fs.StringVar(&c.NVMLLibrary, "nvml-library", c.NVMLLibrary, "NVML library `path` (default: libnvidia-ml.so.1 from the library path)")
	fs.StringVar(&c.DevicePluginDir, "device-plugin-dir", c.DevicePluginDir, "kubelet device plugin `dir`")
	fs.StringVar(&c.MetricsAddress, "metrics-address", c.MetricsAddress, "`host:port` serving /metrics (and /healthz and /readyz)")
	fs.StringVar(&c.HealthAddress, "health-address", c.HealthAddress, "`host:port` serving /healthz and /readyz on a listener of their own, for the kubelet's probes, from before the node lock is taken; empty for none")
	fs.StringVar(&c.WebConfigFile, "web-config-file", c.WebConfigFile, "exporter-toolkit web config `file` for TLS and basic auth on the metrics address")
	fs.StringVar(&c.MetricsAuth, "metrics-auth", c.MetricsAuth, "none, or kubernetes: /metrics serves only bearer tokens the API server authenticates (TokenReview) whose user may get /metrics (SubjectAccessReview)")
	fs.DurationVar(&c.SampleInterval.Duration, "sample-interval", c.SampleInterval.Duration, "how often GPUs, processes and the kubelet are sampled for metrics")
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "this node's name (default $NODE_NAME)")
	fs.StringVar(&c.SysfsRoot, "sysfs-root", c.SysfsRoot, "where sysfs is mounted, for GPUs' NUMA nodes")
	fs.StringVar(&c.Enforcement.Mode, "enforcement", c.Enforcement.Mode, "best-effort (a tier that cannot engage on this node is reported per container and node, and slices are still offered) or required (then no slices are offered: each is Unhealthy, with the reason)")
	fs.BoolVar(&c.Enforcement.Compute, "enforce-compute", c.Enforcement.Compute, "hold each container to its compute share by freezing its cgroup for part of each period")
	fs.StringVar(&c.Enforcement.Policy, "compute-policy", c.Enforcement.Policy, "burst (hold to the share only while others want the GPU) or strict (always)")
	fs.StringVar(&c.Enforcement.MemoryPolicy, "memory-policy", c.Enforcement.MemoryPolicy, "a container over its GPU memory: kill (its newest GPU processes until it fits; its whole cgroup when over again in the next sample), log, or off")
	fs.BoolVar(&c.Enforcement.DriverMemoryLimits, "driver-memory-limits", c.Enforcement.DriverMemoryLimits, "set the driver's per-cgroup GPU memory limits on each container where the driver has them (r615+, cgroup v2); the memory watchdog stays as a backstop")
	fs.StringVar(&c.Enforcement.PodComputePolicy, "pod-compute-policy", c.Enforcement.PodComputePolicy, "what a pod's gpuslice.io/compute-policy annotation may do: stricter-only (strict on a burst node, nothing else), allow (either way), or ignore")
	fs.StringVar(&c.Enforcement.UnauthorizedGPUUse, "unauthorized-gpu-use", c.Enforcement.UnauthorizedGPUUse, "a process in a pod using a GPU its container holds no slice of: kill, freeze (its cgroup until it is gone) or log")
	fs.Func("unauthorized-gpu-use-exempt-namespaces", "comma-separated `namespaces` whose pods may use GPUs without slices (e.g. DCGM's); their use is only reported", func(v string) error {
		c.Enforcement.UnauthorizedExemptNamespaces = splitList(v)
		return nil
	})
	fs.Func("runtime-state-dirs", "comma-separated container runtime state `dirs` holding containers' OCI bundles, to tell a container's name from its cgroup (default containerd's and CRI-O's)", func(v string) error {
		c.RuntimeStateDirs = splitList(v)
		return nil
	})
	fs.DurationVar(&c.Enforcement.Period.Duration, "throttle-period", c.Enforcement.Period.Duration, "compute throttle period")
	fs.DurationVar(&c.Enforcement.MinRun.Duration, "throttle-min-run", c.Enforcement.MinRun.Duration, "throttle period per throttled container: a GPU's period is at least n x this with n throttled, up to the sample interval (0: off)")
	fs.StringVar(&c.Enforcement.StateFile, "enforcement-state", c.Enforcement.StateFile, "`file` recording throttled containers, thawed by the next agent if this one dies")
	fs.StringVar(&c.PodResourcesSocket, "pod-resources-socket", c.PodResourcesSocket, "kubelet pod-resources `socket`, for which container holds which slices")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", c.CgroupRoot, "the host's cgroup filesystem `root`, where containers are frozen for the compute throttle")
	fs.StringVar(&c.ProcRoot, "proc-root", c.ProcRoot, "the host's proc filesystem `root`, for attributing GPU processes to containers")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig `file`; in-cluster config when empty")
	fs.BoolVar(&c.NodeLabels, "node-labels", c.NodeLabels, "label this node (--node-name) with its GPUs and slicing")
	fs.BoolVar(&c.GFDLabels, "gfd-labels", c.GFDLabels, "include the GPU Feature Discovery compatible nvidia.com/* labels; turn off where GFD runs")
	fs.BoolVar(&c.GFDSharedProduct, "gfd-shared-product", c.GFDSharedProduct, "append -SHARED to nvidia.com/gpu.product, as GFD does for a shared GPU whose resource keeps its name (off: gpuslice offers its own resource, so the product keeps naming the GPU)")
	fs.StringVar(&c.MachineTypeFile, "machine-type-file", c.MachineTypeFile, "`file` naming the machine for nvidia.com/gpu.machine (default <sysfs-root>/class/dmi/id/product_name)")
	fs.StringVar(&c.ResourceName, "resource-name", c.ResourceName, "extended resource `name` offered to the kubelet")
	fs.StringVar(&c.Placement, "placement", c.Placement, "slice placement: binpack or spread")
	fs.IntVar(&c.Slicing.SlicesPerGPU, "slices-per-gpu", c.Slicing.SlicesPerGPU, fmt.Sprintf("cut every GPU into `n` slices (default %d unless --slice-memory)", vgpu.DefaultSlicesPerGPU))
	fs.StringVar(&c.Slicing.SliceMemory, "slice-memory", c.Slicing.SliceMemory, "cut every GPU into slices of this much `memory`, e.g. 10Gi")
	fs.BoolVar(&c.DeviceSpecs.Enabled, "device-specs", c.DeviceSpecs.Enabled, "return /dev/nvidia* device nodes from Allocate")
	fs.StringVar(&c.DeviceSpecs.DevRoot, "dev-root", c.DeviceSpecs.DevRoot, "host `dir` holding the nvidia device nodes")
	fs.BoolVar(&c.CDI.Enabled, "cdi", c.CDI.Enabled, "return CDI device names from Allocate")
	fs.BoolVar(&c.DRA.Enabled, "dra", c.DRA.Enabled, "account for, limit and report containers holding claims of gpuslice's DRA driver")
	fs.StringVar(&c.DRA.PreparedClaims, "dra-prepared-claims", c.DRA.PreparedClaims, "the DRA driver's record of prepared claims (`file`)")
	fs.BoolVar(&c.DRA.ExtendedResource, "dra-extended-resource", c.DRA.ExtendedResource, "leave the extended resource to DRA: advertise no slices, so the scheduler serves it through the DeviceClass that maps it (needs --dra and gpu-dra-driver --slice-devices)")
	fs.StringVar(&c.CDI.Kind, "cdi-kind", c.CDI.Kind, "CDI `kind` for device names")
	fs.BoolVar(&c.MPS.Enabled, "mps", c.MPS.Enabled, "set MPS thread and memory limits from Allocate")
	fs.StringVar(&c.MPS.PipeDirectory, "mps-pipe-dir", c.MPS.PipeDirectory, "MPS pipe `dir` on the host")
	fs.DurationVar(&c.Health.ProbeInterval.Duration, "health-probe-interval", c.Health.ProbeInterval.Duration, "how often GPUs are probed for loss and recovery")
	fs.DurationVar(&c.Health.XIDRecovery.Duration, "xid-recovery", c.Health.XIDRecovery.Duration, "quiet time after an XID before a GPU is healthy again (0: never)")
	fs.StringVar(&c.Log.Level, "log-level", c.Log.Level, "log level: debug, info, warn or error")
	fs.StringVar(&c.Log.Format, "log-format", c.Log.Format, "log format: text or json")
	return fs
}

// usage returns the flag reference.
func usage() string {
	var b strings.Builder
	c := defaultConfig(func(string) string { return "" })
	fs := flagSet(&c)
	fs.SetOutput(&b)
	fmt.Fprintf(&b, "Usage: gpu-agent [flags]\n\nOffers GPU slices to the kubelet as a device plugin.\n\nFlags:\n")
	fs.PrintDefaults()
	return b.String()
}

// The config file's format.
const (
	ConfigAPIVersion = "gpuslice.io/v1alpha1"
	ConfigKind       = "AgentConfig"
)

// loadConfig builds the configuration from args and the environment (the
// defaults, then the --config file, then the flags given explicitly) and
// resolves it.
func loadConfig(args []string, getenv func(string) string) (Resolved, error) {
	cfg, err := readConfig(args, getenv)
	if err != nil {
		return Resolved{}, err
	}
	return cfg.Resolve()
}

func readConfig(args []string, getenv func(string) string) (Config, error) {
	cfg := defaultConfig(getenv)
	if err := parseFlags(&cfg, args); err != nil {
		return Config{}, err
	}
	if cfg.ConfigFile != "" {
		fromFile := defaultConfig(getenv)
		data, err := os.ReadFile(cfg.ConfigFile)
		if err != nil {
			return Config{}, fmt.Errorf("read config: %w", err)
		}
		if err := yaml.UnmarshalStrict(data, &fromFile); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", cfg.ConfigFile, err)
		}
		if fromFile.APIVersion != ConfigAPIVersion || fromFile.Kind != ConfigKind {
			return Config{}, fmt.Errorf("config %s: apiVersion %q, kind %q: want apiVersion: %s and kind: %s", cfg.ConfigFile, fromFile.APIVersion, fromFile.Kind, ConfigAPIVersion, ConfigKind)
		}
		if err := parseFlags(&fromFile, args); err != nil {
			return Config{}, err
		}
		cfg = fromFile
	}
	return cfg, nil
}

func parseFlags(c *Config, args []string) error {
	fs := flagSet(c)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	// A slicing flag replaces the file's slicing mode rather than mixing
	// with it; giving both flags is left for Validate to refuse.
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

// Resolved is a valid configuration and what it resolves to: the options
// each component takes, every setting parsed once. Loggers are the
// caller's to set.
type Resolved struct {
	Config
	LogLevel     slog.Level
	Slicing      vgpu.Config
	Plugin       deviceplugin.Options
	NVML         nvml.Options
	Sampler      sampler.Options
	PodResources podresources.Options
	Enforce      enforce.Options
}

// Resolve checks the configuration and resolves it; it reports the first
// setting that cannot work, naming it.
func (c Config) Resolve() (Resolved, error) {
	if err := c.checkSources(); err != nil {
		return Resolved{}, err
	}
	r := Resolved{Config: c, NVML: c.nvmlOptions(), Sampler: c.samplerOptions(), PodResources: c.podResourcesOptions()}
	var err error
	if r.Slicing, err = c.slicing(); err != nil {
		return Resolved{}, fmt.Errorf("slicing: %w", err)
	}
	r.Plugin = c.pluginOptions()
	if err := r.Plugin.Validate(); err != nil {
		return Resolved{}, err
	}
	if r.Enforce, err = c.enforceOptions(); err != nil {
		return Resolved{}, err
	}
	if err := c.checkIntervals(); err != nil {
		return Resolved{}, err
	}
	if r.LogLevel, err = parseLevel(c.Log.Level); err != nil {
		return Resolved{}, err
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return Resolved{}, fmt.Errorf("--log-format %q: want text or json", c.Log.Format)
	}
	if c.DRA.ExtendedResource && !c.DRA.Enabled {
		return Resolved{}, errors.New("--dra-extended-resource needs --dra")
	}
	return r, c.checkPaths()
}

// checkSources checks the GPU backend and the metrics endpoint.
func (c Config) checkSources() error {
	switch c.GPUBackend {
	case "nvml":
		if c.FakeConfig != "" {
			return errors.New("--fake-config needs --gpu-backend=fake")
		}
	case "fake":
		if err := gpubackend.CheckFakeFile(c.FakeConfig); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--gpu-backend %q: want nvml or fake", c.GPUBackend)
	}
	if _, _, err := net.SplitHostPort(c.MetricsAddress); err != nil {
		return fmt.Errorf("--metrics-address %q: %w", c.MetricsAddress, err)
	}
	if _, _, err := net.SplitHostPort(c.HealthAddress); c.HealthAddress != "" && err != nil {
		return fmt.Errorf("--health-address %q: %w", c.HealthAddress, err)
	}
	if err := exporter.ValidateWebConfig(c.WebConfigFile); err != nil {
		return fmt.Errorf("--web-config-file: %w", err)
	}
	if c.MetricsAuth != "none" && c.MetricsAuth != "kubernetes" {
		return fmt.Errorf("--metrics-auth %q: want none or kubernetes", c.MetricsAuth)
	}
	return nil
}

func (c Config) checkIntervals() error {
	if c.Enforcement.Period.Duration < 10*time.Millisecond {
		return fmt.Errorf("--throttle-period %s must be at least 10ms", c.Enforcement.Period)
	}
	if m := c.Enforcement.MinRun.Duration; m < 0 || m > c.Enforcement.Period.Duration*enforce.MaxPeriodFactor/2 {
		return fmt.Errorf("--throttle-min-run %s must be between 0 and %s (half the longest period, %d × --throttle-period)", m, c.Enforcement.Period.Duration*enforce.MaxPeriodFactor/2, enforce.MaxPeriodFactor)
	}
	if c.SampleInterval.Duration < 100*time.Millisecond {
		return fmt.Errorf("--sample-interval %s must be at least 100ms", c.SampleInterval)
	}
	if c.Health.ProbeInterval.Duration <= 0 {
		return fmt.Errorf("--health-probe-interval %s must be positive", c.Health.ProbeInterval)
	}
	if c.Health.XIDRecovery.Duration < 0 {
		return fmt.Errorf("--xid-recovery %s must not be negative", c.Health.XIDRecovery)
	}
	return nil
}

func (c Config) checkPaths() error {
	for _, d := range c.RuntimeStateDirs {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("--runtime-state-dirs: %q is not an absolute path", d)
		}
	}
	for _, p := range []struct{ flag, path string }{
		{"--nvml-library", c.NVMLLibrary},
		{"--sysfs-root", c.SysfsRoot},
		{"--pod-resources-socket", c.PodResourcesSocket},
		{"--cgroup-root", c.CgroupRoot},
		{"--enforcement-state", c.Enforcement.StateFile},
		{"--proc-root", c.ProcRoot},
		{"--kubeconfig", c.Kubeconfig},
		{"--dra-prepared-claims", c.DRA.PreparedClaims},
	} {
		optional := p.flag == "--nvml-library" || p.flag == "--kubeconfig"
		if (p.path != "" || !optional) && !filepath.IsAbs(p.path) {
			return fmt.Errorf("%s %q must be an absolute path", p.flag, p.path)
		}
	}
	return nil
}

func (c Config) slicing() (vgpu.Config, error) {
	def, err := rule(c.Slicing.SlicesPerGPU, c.Slicing.SliceMemory)
	if err != nil {
		return vgpu.Config{}, err
	}
	if def == (vgpu.Rule{}) {
		def.SlicesPerGPU = vgpu.DefaultSlicesPerGPU
	}
	out := vgpu.Config{Default: def, Models: map[string]vgpu.Rule{}}
	for model, r := range c.Slicing.Models {
		mr, err := rule(r.SlicesPerGPU, r.SliceMemory)
		if err != nil {
			return vgpu.Config{}, fmt.Errorf("model %q: %w", model, err)
		}
		out.Models[model] = mr
	}
	return out, out.Validate()
}

func rule(slices int, mem string) (vgpu.Rule, error) {
	r := vgpu.Rule{SlicesPerGPU: slices}
	if mem != "" {
		b, err := vgpu.ParseSize(mem)
		if err != nil {
			return vgpu.Rule{}, fmt.Errorf("sliceMemory: %w", err)
		}
		r.SliceMemoryBytes = b
	}
	return r, nil
}

func (c Config) pluginOptions() deviceplugin.Options {
	o := deviceplugin.DefaultOptions()
	o.ResourceName = c.ResourceName
	o.PluginDir = c.DevicePluginDir
	o.Placement = vgpu.Policy(c.Placement)
	o.DeviceSpecs = c.DeviceSpecs.Enabled
	o.DevRoot = c.DeviceSpecs.DevRoot
	o.CDI = deviceplugin.CDIOptions{Enabled: c.CDI.Enabled, Kind: c.CDI.Kind, NameStrategy: c.CDI.NameStrategy}
	if c.DRA.Enabled {
		// One GPU serves one front end at a time.
		o.DRAGPUs = kubeletstate.ClaimedGPUsReader(c.DRA.PreparedClaims)
		o.FrontEnds = frontend.New(filepath.Dir(c.DRA.PreparedClaims))
		o.NoSlices = c.DRA.ExtendedResource
	}
	o.MPS = deviceplugin.MPSOptions{Enabled: c.MPS.Enabled, PipeDirectory: c.MPS.PipeDirectory}
	// One socket path per agent process: a successor started while its
	// predecessor is still connected (a force-deleted pod) must not be
	// refused by the kubelet for good.
	o.UniqueSocket = true
	return o
}

func (c Config) nvmlOptions() nvml.Options {
	o := nvml.DefaultOptions()
	o.LibraryPath = c.NVMLLibrary
	o.ProbeInterval = c.Health.ProbeInterval.Duration
	o.XIDRecovery = c.Health.XIDRecovery.Duration
	o.IgnoredXIDs = c.Health.IgnoredXIDs
	o.SysfsRoot = c.SysfsRoot
	return o
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func (c Config) samplerOptions() sampler.Options {
	o := sampler.DefaultOptions()
	o.Interval = c.SampleInterval.Duration
	o.ProcRoot = c.ProcRoot
	o.PluginDir = c.DevicePluginDir
	o.ResourceName = c.ResourceName
	o.DRA, o.PreparedClaims = c.DRA.Enabled, c.DRA.PreparedClaims
	return o
}

func (c Config) podResourcesOptions() podresources.Options {
	o := podresources.DefaultOptions()
	o.Socket = c.PodResourcesSocket
	o.ResourceName = c.ResourceName
	if c.DRA.Enabled {
		o.DRADriver = contract.DRADriverName
	}
	return o
}

func (c Config) enforceOptions() (enforce.Options, error) {
	o := enforce.DefaultOptions()
	var err error
	if o.Policy, err = enforce.ParsePolicy(c.Enforcement.Policy); err != nil {
		return o, fmt.Errorf("--compute-policy: %w", err)
	}
	if o.Memory, err = enforce.ParseMemoryPolicy(c.Enforcement.MemoryPolicy); err != nil {
		return o, fmt.Errorf("--memory-policy: %w", err)
	}
	if o.PodPolicies, err = enforce.ParsePodPolicyMode(c.Enforcement.PodComputePolicy); err != nil {
		return o, fmt.Errorf("--pod-compute-policy: %w", err)
	}
	if o.Unauthorized, err = enforce.ParseUnauthorizedPolicy(c.Enforcement.UnauthorizedGPUUse); err != nil {
		return o, fmt.Errorf("--unauthorized-gpu-use: %w", err)
	}
	o.CgroupRoot = c.CgroupRoot
	o.Period = c.Enforcement.Period.Duration
	o.MinRun = c.Enforcement.MinRun.Duration
	o.State = enforce.StateFile{Path: c.Enforcement.StateFile}
	o.Compute = c.Enforcement.Compute
	o.MPS = c.MPS.Enabled
	o.DriverMemoryLimits = c.Enforcement.DriverMemoryLimits
	o.ProcRoot = c.ProcRoot
	o.UnauthorizedExempt = c.Enforcement.UnauthorizedExemptNamespaces
	switch c.Enforcement.Mode {
	case modeBestEffort:
	case modeRequired:
		// Required enforcement of a tier turned off would offer nothing,
		// ever: say so at start instead.
		if !o.Compute && !o.MPS {
			return o, errors.New("--enforcement=required needs the compute tier: drop --enforce-compute=false (or enable MPS)")
		}
		if o.Memory != enforce.MemoryKill {
			return o, fmt.Errorf("--enforcement=required needs --memory-policy=kill, not %s", o.Memory)
		}
	default:
		return o, fmt.Errorf("--enforcement %q: want %s or %s", c.Enforcement.Mode, modeBestEffort, modeRequired)
	}
	return o, nil
}

// The values of --enforcement.
const (
	modeBestEffort = "best-effort"
	modeRequired   = "required"
)

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
