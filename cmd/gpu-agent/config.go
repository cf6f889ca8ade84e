package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/internal/nodeconfig"
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

// Config is everything gpu-agent can be told: the node binaries' one
// configuration, by flags or by the file named with --config.
type Config = nodeconfig.Config

// flagSet binds every flag to a field of c: the ones both node binaries
// take (nodeconfig.SharedFlags) and the agent's own. Defaults are c's current
// values, so parsing sets only the flags given.
func flagSet(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("gpu-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	nodeconfig.SharedFlags(fs, c)
	fs.StringVar(&c.DevicePluginDir, "device-plugin-dir", c.DevicePluginDir, "kubelet device plugin `dir`")
	fs.StringVar(&c.MetricsAddress, "metrics-address", c.MetricsAddress, "`host:port` serving /metrics (and /healthz and /readyz)")
	fs.StringVar(&c.HealthAddress, "health-address", c.HealthAddress, "`host:port` serving /healthz and /readyz on a listener of their own, for the kubelet's probes, from before the node lock is taken; empty for none")
	fs.StringVar(&c.WebConfigFile, "web-config-file", c.WebConfigFile, "exporter-toolkit web config `file` for TLS and basic auth on the metrics address")
	fs.StringVar(&c.MetricsAuth, "metrics-auth", c.MetricsAuth, "none, or kubernetes: /metrics serves only bearer tokens the API server authenticates (TokenReview) whose user may get /metrics (SubjectAccessReview)")
	fs.DurationVar(&c.SampleInterval.Duration, "sample-interval", c.SampleInterval.Duration, "how often GPUs, processes and the kubelet are sampled for metrics")
	fs.StringVar(&c.Enforcement.Mode, "enforcement", c.Enforcement.Mode, "best-effort (a tier that cannot engage on this node is reported per container and node, and slices are still offered) or required (then no slices are offered: each is Unhealthy, with the reason)")
	fs.BoolVar(&c.Enforcement.Compute, "enforce-compute", c.Enforcement.Compute, "hold each container to its compute share by freezing its cgroup for part of each period")
	fs.StringVar(&c.Enforcement.Policy, "compute-policy", c.Enforcement.Policy, "burst (hold to the share only while others want the GPU) or strict (always)")
	fs.StringVar(&c.Enforcement.MemoryPolicy, "memory-policy", c.Enforcement.MemoryPolicy, "a container over its GPU memory: kill (its newest GPU processes until it fits; its whole cgroup when over again in the next sample), log, or off")
	fs.BoolVar(&c.Enforcement.DriverMemoryLimits, "driver-memory-limits", c.Enforcement.DriverMemoryLimits, "set the driver's per-cgroup GPU memory limits on each container where the driver has them (r615+, cgroup v2); the memory watchdog stays as a backstop")
	fs.StringVar(&c.Enforcement.PodComputePolicy, "pod-compute-policy", c.Enforcement.PodComputePolicy, "what a pod's gpuslice.io/compute-policy annotation may do: stricter-only (strict on a burst node, nothing else), allow (either way), or ignore")
	fs.StringVar(&c.Enforcement.UnauthorizedGPUUse, "unauthorized-gpu-use", c.Enforcement.UnauthorizedGPUUse, "a process in a pod using a GPU its container holds no slice of: kill, freeze (its cgroup until it is gone) or log")
	fs.Func("unauthorized-gpu-use-exempt-namespaces", "comma-separated `namespaces` whose pods may use GPUs without slices (e.g. DCGM's); their use is only reported", func(v string) error {
		c.Enforcement.UnauthorizedExemptNamespaces = nodeconfig.SplitList(v)
		return nil
	})
	fs.Func("runtime-state-dirs", "comma-separated container runtime state `dirs` holding containers' OCI bundles, to tell a container's name from its cgroup (default containerd's and CRI-O's)", func(v string) error {
		c.RuntimeStateDirs = nodeconfig.SplitList(v)
		return nil
	})
	fs.DurationVar(&c.Enforcement.Period.Duration, "throttle-period", c.Enforcement.Period.Duration, "compute throttle period")
	fs.DurationVar(&c.Enforcement.MinRun.Duration, "throttle-min-run", c.Enforcement.MinRun.Duration, "throttle period per throttled container: a GPU's period is at least n x this with n throttled, up to the sample interval (0: off)")
	fs.DurationVar(&c.Enforcement.MinTurn.Duration, "mig-min-turn", c.Enforcement.MinTurn.Duration, "shortest turn of a container sharing a MIG instance in each period; the period grows to fit it, up to 40 x --throttle-period (0: the throttle period)")
	fs.StringVar(&c.Enforcement.StateFile, "enforcement-state", c.Enforcement.StateFile, "`file` recording throttled containers, thawed by the next agent if this one dies")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", c.CgroupRoot, "the host's cgroup filesystem `root`, where containers are frozen for the compute throttle")
	fs.StringVar(&c.ProcRoot, "proc-root", c.ProcRoot, "the host's proc filesystem `root`, for attributing GPU processes to containers")
	fs.BoolVar(&c.NodeLabels, "node-labels", c.NodeLabels, "label this node (--node-name) with its GPUs and slicing")
	fs.BoolVar(&c.GFDLabels, "gfd-labels", c.GFDLabels, "include the GPU Feature Discovery compatible nvidia.com/* labels; turn off where GFD runs")
	fs.BoolVar(&c.GFDSharedProduct, "gfd-shared-product", c.GFDSharedProduct, "append -SHARED to nvidia.com/gpu.product, as GFD does for a shared GPU whose resource keeps its name (off: gpuslice offers its own resource, so the product keeps naming the GPU)")
	fs.StringVar(&c.MachineTypeFile, "machine-type-file", c.MachineTypeFile, "`file` naming the machine for nvidia.com/gpu.machine (default <sysfs-root>/class/dmi/id/product_name)")
	fs.StringVar(&c.Placement, "placement", c.Placement, "slice placement: binpack or spread")
	fs.StringVar(&c.Span, "span", c.Span, "a container's request no one GPU can hold: fewest (span the fewest GPUs) or never (refuse it: the pod fails admission)")
	fs.DurationVar(&c.SpanHoldBack.Duration, "span-hold-back", c.SpanHoldBack.Duration, "with --span=never, how long free slices are offered Unhealthy after a refusal so the scheduler does not send the pod straight back (doubles per refusal up to 5m; 0: off)")
	fs.BoolVar(&c.DeviceSpecs.Enabled, "device-specs", c.DeviceSpecs.Enabled, "return /dev/nvidia* device nodes from Allocate")
	fs.BoolVar(&c.CDI.Enabled, "cdi", c.CDI.Enabled, "return CDI device names from Allocate")
	fs.BoolVar(&c.DRA.Enabled, "dra", c.DRA.Enabled, "account for, limit and report containers holding claims of gpuslice's DRA driver")
	fs.StringVar(&c.CDI.Kind, "cdi-kind", c.CDI.Kind, "CDI `kind` for device names")
	fs.BoolVar(&c.MPS.Enabled, "mps", c.MPS.Enabled, "set MPS thread and memory limits from Allocate")
	fs.StringVar(&c.MPS.PipeDirectory, "mps-pipe-dir", c.MPS.PipeDirectory, "MPS pipe `dir` on the host")
	return fs
}

// usage returns the flag reference.
func usage() string {
	var b strings.Builder
	c := nodeconfig.Default(func(string) string { return "" })
	fs := flagSet(&c)
	fs.SetOutput(&b)
	fmt.Fprintf(&b, "Usage: gpu-agent [flags]\n\nOffers GPU slices to the kubelet as a device plugin.\n\nFlags:\n")
	fs.PrintDefaults()
	return b.String()
}

// loadConfig builds the configuration from args and the environment (the
// defaults, then the --config file, then the flags given explicitly) and
// resolves it.
func loadConfig(args []string, getenv func(string) string) (Resolved, error) {
	cfg, err := nodeconfig.Load(args, getenv, flagSet)
	if err != nil {
		return Resolved{}, err
	}
	return resolve(cfg)
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

// resolve checks the configuration and resolves it; it reports the first
// setting that cannot work, naming it.
func resolve(c Config) (Resolved, error) {
	if err := c.Check(); err != nil {
		return Resolved{}, err
	}
	if err := checkEndpoints(c); err != nil {
		return Resolved{}, err
	}
	r := Resolved{Config: c, NVML: c.NVMLOptions(), Sampler: baseSamplerOptions(c), PodResources: podResourcesOptions(c)}
	r.Slicing, _ = c.SliceRules() // checked
	r.LogLevel, _ = c.LogLevel()  // checked
	r.Plugin = pluginOptions(c)
	if err := r.Plugin.Validate(); err != nil {
		return Resolved{}, err
	}
	var err error
	if r.Enforce, err = enforceOptions(c); err != nil {
		return Resolved{}, err
	}
	if err := checkIntervals(c); err != nil {
		return Resolved{}, err
	}
	if c.DRA.ExtendedResource && !c.DRA.Enabled {
		return Resolved{}, errors.New("--dra-extended-resource needs --dra")
	}

	return r, checkPaths(c)
}

// checkEndpoints checks the metrics and probe endpoints.
func checkEndpoints(c Config) error {
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

func checkIntervals(c Config) error {
	if c.Enforcement.Period.Duration < 10*time.Millisecond {
		return fmt.Errorf("--throttle-period %s must be at least 10ms", c.Enforcement.Period)
	}
	if m := c.Enforcement.MinRun.Duration; m < 0 || m > c.Enforcement.Period.Duration*enforce.MaxPeriodFactor/2 {
		return fmt.Errorf("--throttle-min-run %s must be between 0 and %s (half the longest period, %d × --throttle-period)", m, c.Enforcement.Period.Duration*enforce.MaxPeriodFactor/2, enforce.MaxPeriodFactor)
	}
	if m := c.Enforcement.MinTurn.Duration; m < 0 || m > c.Enforcement.Period.Duration*enforce.MaxPeriodFactor/2 {
		return fmt.Errorf("--mig-min-turn %s must be between 0 and %s (half the longest period, %d × --throttle-period)", m, c.Enforcement.Period.Duration*enforce.MaxPeriodFactor/2, enforce.MaxPeriodFactor)
	}
	if c.SampleInterval.Duration < 100*time.Millisecond {
		return fmt.Errorf("--sample-interval %s must be at least 100ms", c.SampleInterval)
	}
	return nil
}

// checkPaths checks the agent's own paths; nodeconfig checks the shared.
func checkPaths(c Config) error {
	for _, d := range c.RuntimeStateDirs {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("--runtime-state-dirs: %q is not an absolute path", d)
		}
	}
	return nodeconfig.CheckPaths(
		nodeconfig.Path{Flag: "--device-plugin-dir", Path: c.DevicePluginDir},
		nodeconfig.Path{Flag: "--cgroup-root", Path: c.CgroupRoot},
		nodeconfig.Path{Flag: "--enforcement-state", Path: c.Enforcement.StateFile},
		nodeconfig.Path{Flag: "--proc-root", Path: c.ProcRoot},
	)
}

func pluginOptions(c Config) deviceplugin.Options {
	o := deviceplugin.DefaultOptions()
	o.ResourceName = c.ResourceName
	o.PluginDir = c.DevicePluginDir
	o.Placement = vgpu.Policy(c.Placement)
	o.Span, o.SpanHoldBack = c.Span, c.SpanHoldBack.Duration
	o.SpanHoldBackMax = max(o.SpanHoldBackMax, o.SpanHoldBack)
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

func baseSamplerOptions(c Config) sampler.Options {
	o := sampler.DefaultOptions()
	o.Interval = c.SampleInterval.Duration
	o.ProcRoot = c.ProcRoot
	o.PluginDir = c.DevicePluginDir
	o.ResourceName = c.ResourceName
	o.DRA, o.PreparedClaims = c.DRA.Enabled, c.DRA.PreparedClaims
	return o
}

func podResourcesOptions(c Config) podresources.Options {
	o := podresources.DefaultOptions()
	o.Socket = c.PodResourcesSocket
	o.ResourceName = c.ResourceName
	if c.DRA.Enabled {
		o.DRADriver = contract.DRADriverName
	}
	return o
}

func enforceOptions(c Config) (enforce.Options, error) {
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
	o.MinTurn = c.Enforcement.MinTurn.Duration
	o.State = enforce.StateFile{Path: c.Enforcement.StateFile}
	o.Compute = c.Enforcement.Compute
	o.MPS = c.MPS.Enabled
	o.DriverMemoryLimits = c.Enforcement.DriverMemoryLimits
	o.ProcRoot = c.ProcRoot
	o.UnauthorizedExempt = c.Enforcement.UnauthorizedExemptNamespaces
	switch c.Enforcement.Mode {
	case nodeconfig.ModeBestEffort:
	case nodeconfig.ModeRequired:
		// Required enforcement of a tier turned off would offer nothing,
		// ever: say so at start instead.
		if !o.Compute && !o.MPS {
			return o, errors.New("--enforcement=required needs the compute tier: drop --enforce-compute=false (or enable MPS)")
		}
		if o.Memory != enforce.MemoryKill {
			return o, fmt.Errorf("--enforcement=required needs --memory-policy=kill, not %s", o.Memory)
		}
	default:
		return o, fmt.Errorf("--enforcement %q: want %s or %s", c.Enforcement.Mode, nodeconfig.ModeBestEffort, nodeconfig.ModeRequired)
	}
	return o, nil
}
