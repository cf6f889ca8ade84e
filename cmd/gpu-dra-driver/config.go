package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Config is the driver's configuration, from flags (and NODE_NAME).
type Config struct {
	GPUBackend  string
	FakeConfig  string
	NVMLLibrary string
	NodeName    string
	Kubeconfig  string
	// KubeAPIQPS and KubeAPIBurst bound the driver's API requests:
	// each Prepare reads its claim, and client-go's default of 5 a second
	// makes a node's burst of pods wait 200 ms per claim.
	KubeAPIQPS   float64
	KubeAPIBurst int
	// Slicing must be the agent's: both cut the GPUs the same way.
	SlicesPerGPU int
	SliceMemory  string
	// SliceDevices publishes each slice as a device as well, so that a
	// DeviceClass with extendedResourceName nvidia.com/vgpu can serve
	// device-plugin requests through DRA.
	SliceDevices bool
	// RegistrarDir is where the kubelet discovers plugins; PluginDir holds
	// the driver's socket.
	RegistrarDir string
	PluginDir    string
	// CDIDir is where claims' CDI specs are written for the runtime.
	CDIDir string
	// StateFile is the record of prepared claims the agent reads.
	StateFile string
	// PodResourcesSocket is the kubelet's pod-resources API: a claim is
	// refused on a GPU whose slices of ResourceName its active pods hold.
	PodResourcesSocket string
	ResourceName       string
	// DevRoot is the host directory of the NVIDIA device nodes.
	DevRoot   string
	LogLevel  string
	LogFormat string
	// ProbeInterval and XIDRecovery tune GPU health on real NVML.
	ProbeInterval time.Duration
	XIDRecovery   time.Duration
	// HealthAddress serves /healthz and /readyz for the kubelet's probes;
	// empty for none.
	HealthAddress string
}

// defaultConfig is what the driver runs with unless told otherwise.
func defaultConfig() Config {
	return Config{
		GPUBackend:         "nvml",
		KubeAPIQPS:         50,
		KubeAPIBurst:       100,
		RegistrarDir:       contract.KubeletDir + "/plugins_registry",
		PluginDir:          contract.KubeletDir + "/plugins/" + contract.DRADriverName,
		CDIDir:             "/var/run/cdi",
		StateFile:          contract.DRAPreparedClaims,
		DevRoot:            "/dev",
		PodResourcesSocket: contract.PodResourcesSocket,
		ResourceName:       contract.ResourceName,
		LogLevel:           "info",
		LogFormat:          "text",
		ProbeInterval:      5 * time.Second,
		XIDRecovery:        5 * time.Minute,
		HealthAddress:      ":9448",
	}
}

func flags(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("gpu-dra-driver", flag.ContinueOnError)
	fs.StringVar(&c.GPUBackend, "gpu-backend", c.GPUBackend, "nvml, or fake for the built-in fake GPU node")
	fs.BoolVar(&c.SliceDevices, "slice-devices", c.SliceDevices, "also publish each slice as a device (with counters shared with its GPU), for a DeviceClass that serves nvidia.com/vgpu through extended-resource mapping")
	fs.StringVar(&c.FakeConfig, "fake-config", c.FakeConfig, "the fake GPU node's YAML `file` (its faults are watched)")
	fs.StringVar(&c.NVMLLibrary, "nvml-library", c.NVMLLibrary, "NVML library `path` (default: the system's libnvidia-ml.so.1)")
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "this node's name (default $NODE_NAME)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig `file` (default: in-cluster)")
	fs.Float64Var(&c.KubeAPIQPS, "kube-api-qps", c.KubeAPIQPS, "API requests a second")
	fs.IntVar(&c.KubeAPIBurst, "kube-api-burst", c.KubeAPIBurst, "API requests in a burst")
	fs.IntVar(&c.SlicesPerGPU, "slices-per-gpu", c.SlicesPerGPU, fmt.Sprintf("cut every GPU into `n` slices, as the agent does (default %d unless --slice-memory)", vgpu.DefaultSlicesPerGPU))
	fs.StringVar(&c.SliceMemory, "slice-memory", c.SliceMemory, "cut every GPU into slices of this much `memory`, e.g. 10Gi, as the agent does; not with --slices-per-gpu")
	fs.StringVar(&c.RegistrarDir, "kubelet-registrar-dir", c.RegistrarDir, "`dir` where the kubelet discovers plugins")
	fs.StringVar(&c.PluginDir, "kubelet-plugin-dir", c.PluginDir, "`dir` of the driver's socket")
	fs.StringVar(&c.CDIDir, "cdi-dir", c.CDIDir, "`dir` the container runtime reads CDI specs from")
	fs.StringVar(&c.StateFile, "dra-prepared-claims", c.StateFile, "the record of prepared claims (`file`) this driver writes and gpu-agent --dra reads, under the same flag")
	fs.StringVar(&c.DevRoot, "dev-root", c.DevRoot, "host `dir` of the NVIDIA device nodes")
	fs.StringVar(&c.PodResourcesSocket, "pod-resources-socket", c.PodResourcesSocket, "the kubelet's pod-resources `socket`: claims are refused on GPUs whose slices its active pods hold")
	fs.StringVar(&c.ResourceName, "resource-name", c.ResourceName, "the device plugin's resource (gpu-agent's --resource-name)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
	fs.DurationVar(&c.ProbeInterval, "health-probe-interval", c.ProbeInterval, "how often each GPU is probed for being lost (real NVML)")
	fs.DurationVar(&c.XIDRecovery, "xid-recovery", c.XIDRecovery, "how long a GPU must go without a new XID to be healthy again; 0 never")
	fs.StringVar(&c.HealthAddress, "health-address", c.HealthAddress, "`host:port` serving /healthz and /readyz for the kubelet's probes, from before the node lock is taken; empty for none")
	return fs
}

// loadConfig parses args; NODE_NAME fills --node-name. The first problem
// is the one error returned.
func loadConfig(args []string, getenv func(string) string) (Config, error) {
	c := defaultConfig()
	c.NodeName = getenv(contract.EnvNodeName)
	fs := flags(&c)
	fs.SetOutput(discard{})
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return c, c.validate()
}

func (c Config) validate() error {
	switch {
	case c.GPUBackend != "nvml" && c.GPUBackend != "fake":
		return fmt.Errorf("--gpu-backend %q: want nvml or fake", c.GPUBackend)
	case c.NodeName == "":
		return errors.New("--node-name (or NODE_NAME) is required: the node's pool is named after it")
	case c.KubeAPIQPS <= 0 || c.KubeAPIBurst < 1:
		return errors.New("--kube-api-qps and --kube-api-burst must be positive")
	case c.ProbeInterval <= 0 || c.XIDRecovery < 0:
		return errors.New("--health-probe-interval must be positive and --xid-recovery not negative")
	}
	if _, err := c.slicing(); err != nil {
		return err
	}
	if _, err := c.level(); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("--log-format %q: want text or json", c.LogFormat)
	}
	if c.GPUBackend == "fake" {
		if err := gpubackend.CheckFakeFile(c.FakeConfig); err != nil {
			return err
		}
	}
	if _, _, err := net.SplitHostPort(c.HealthAddress); c.HealthAddress != "" && err != nil {
		return fmt.Errorf("--health-address %q: %w", c.HealthAddress, err)
	}
	for flag, p := range map[string]string{"--kubelet-registrar-dir": c.RegistrarDir, "--kubelet-plugin-dir": c.PluginDir,
		"--cdi-dir": c.CDIDir, "--dra-prepared-claims": c.StateFile, "--dev-root": c.DevRoot, "--pod-resources-socket": c.PodResourcesSocket} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%s %q must be an absolute path", flag, p)
		}
	}
	return nil
}

// slicing is how the GPUs are cut, as the agent cuts them.
func (c Config) slicing() (vgpu.Config, error) {
	// As the agent cuts them: the count, or the size, never both (Rule's
	// Validate refuses both); neither is the default count.
	r := vgpu.Rule{SlicesPerGPU: c.SlicesPerGPU}
	if c.SliceMemory != "" {
		b, err := vgpu.ParseSize(c.SliceMemory)
		if err != nil {
			return vgpu.Config{}, fmt.Errorf("--slice-memory: %w", err)
		}
		r.SliceMemoryBytes = b
	} else if r.SlicesPerGPU == 0 {
		r.SlicesPerGPU = vgpu.DefaultSlicesPerGPU
	}
	cfg := vgpu.Config{Default: r}
	if err := cfg.Validate(); err != nil {
		return vgpu.Config{}, fmt.Errorf("slicing: %w", err)
	}
	return cfg, nil
}

func (c Config) level() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToLower(c.LogLevel))); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	return l, nil
}

// usage is the flags' help text.
func usage() string {
	var b strings.Builder
	c := defaultConfig()
	fs := flags(&c)
	fs.SetOutput(&b)
	b.WriteString("Usage: gpu-dra-driver [flags]\n\ngpuslice's DRA driver: it publishes the node's GPUs as shareable devices of " +
		contract.DRADriverName + "\nand prepares the claims the scheduler allocates. Run gpu-agent --dra beside it.\n\n")
	fs.PrintDefaults()
	return b.String()
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
