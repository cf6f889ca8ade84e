// Command gpu-dra-driver is gpuslice's DRA driver: a kubelet plugin that
// publishes the node's GPUs as devices several claims share by capacity
// (compute in slices, memory), taints a GPU that fails, and prepares the
// claims the scheduler allocates: a CDI device per claim, carrying the
// same NVIDIA_VISIBLE_DEVICES and GPUSLICE_* contract as device-plugin
// mode, and a record gpu-agent --dra reads to account for, limit and
// report each claim's containers. It is its own binary because the kubelet
// plugin library alone takes more memory than the whole agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"golang.org/x/sync/errgroup"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/draplugin"
	"github.com/gpuslice/gpuslice/pkg/frontend"
	"github.com/gpuslice/gpuslice/pkg/gpuhealth"
	"github.com/gpuslice/gpuslice/pkg/health"
	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
	"github.com/gpuslice/gpuslice/pkg/nodelock"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitConfig = 2
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := loadConfig(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage())
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "gpu-dra-driver: %v\n", err)
		return exitConfig
	}
	log := cfg.Logger(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("gpu-dra-driver failed", "err", err)
		fmt.Fprintf(stderr, "gpu-dra-driver: %v\n", err)
		return exitFailed
	}
	log.Info("stopped")
	return exitOK
}

// serve serves the probes from the start and runs the driver until ctx
// ends or the plugin fails.
func serve(ctx context.Context, cfg Config, log *slog.Logger) error {
	probes := health.NewState("waiting for the node lock " + cfg.DRA.PreparedClaims + ".lock (a predecessor still runs)")
	return health.Around(ctx, cfg.Driver.HealthAddress, probes, log, func(ctx context.Context) error { return serveDriver(ctx, cfg, probes, log) })
}

// serveDriver runs the driver until ctx ends or the plugin fails; probes
// says how far it got.
func serveDriver(ctx context.Context, cfg Config, probes *health.State, log *slog.Logger) error {
	unlock, err := nodelock.Lock(ctx, cfg.DRA.PreparedClaims+".lock", "gpu-dra-driver", log)
	if err != nil {
		return err
	}
	defer unlock()
	probes.NotReady("starting: the node lock is taken")
	backend, watch, n, err := openGPUs(cfg, log)
	if reason := gpubackend.NoGPUReason(err); reason != "" {
		return idleWithoutGPUs(ctx, cfg, reason, err, probes, log)
	}
	if err != nil {
		return err
	}
	defer func() { _ = backend.Close() }()
	// Its own directories; the kubelet's registrar directory is the
	// kubelet's to make.
	for _, d := range []string{cfg.Driver.PluginDir, cfg.Driver.CDIDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return fmt.Errorf("driver directory: %w", err)
		}
	}
	po := podresources.DefaultOptions()
	po.Socket, po.ResourceName = cfg.PodResourcesSocket, cfg.ResourceName
	podres, err := podresources.New(po)
	if err != nil {
		return err
	}
	defer func() { _ = podres.Close() }()
	guard := frontend.New(filepath.Dir(cfg.DRA.PreparedClaims))
	prep, err := dra.NewPreparer(dra.PreparerOptions{Pool: cfg.NodeName, Layout: n.layout, MIG: n.mig, Nodes: n.nodes, CDIDir: cfg.Driver.CDIDir, StatePath: cfg.DRA.PreparedClaims,
		DevicePluginGPUs: kubeletstate.SlicedGPUsReader(podres, guard, cfg.ResourceName, n.layout), FrontEnds: guard})
	if err != nil {
		return err
	}
	client, err := kubeClient(cfg)
	if err != nil {
		return err
	}
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	taints, _ := taintPolicy(cfg) // validated
	plugin, err := draplugin.Start(ctx, draplugin.Options{NodeName: cfg.NodeName, Taints: taints, ClaimEnforcement: contract.ClaimEnforcementPath(cfg.DRA.PreparedClaims), Client: client, Preparer: prep, Devices: n.devices, Counters: n.counters,
		RegistrarDir: cfg.Driver.RegistrarDir, PluginDir: cfg.Driver.PluginDir, Fatal: fail, Logger: log})
	if err != nil {
		return err
	}
	defer plugin.Stop()
	probes.Set(func() error { return nil }) // registered and published
	log.Info("serving", "version", version, "node", cfg.NodeName, "backend", cfg.GPUBackend, "gpus", len(n.devices),
		"slices", n.layout.TotalSlices(), "mig_instances", len(n.mig), "driver", n.sys.DriverVersion, "claims_prepared", len(prep.Claims()))
	g, gctx := errgroup.WithContext(ctx)
	// The one record of GPU health, as in gpu-agent: Prepare refuses an
	// unhealthy GPU, the plugin taints its device.
	monitor := gpuhealth.New(nvml.UUIDs(n.all), log)
	monitor.Subscribe(func(h nvml.Health) {
		why := ""
		if !h.Healthy {
			why = "unhealthy (" + h.Reason + ")"
		}
		prep.SetHealth(h.UUID, why)
		if err := plugin.SetHealth(gctx, h); err != nil {
			log.Warn("gpu health not published", "uuid", h.UUID, "err", err)
		}
	})
	g.Go(func() error { monitor.Run(gctx, backend, gpuhealth.Retry); return nil })
	if watch != nil {
		g.Go(func() error { return watch(gctx, log) })
	}
	g.Go(func() error { return followMIG(gctx, backend, n.all, cfg.Health.ProbeInterval.Duration, log) })
	werr := g.Wait()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return werr
}

// nodeGPUs is what the driver publishes and prepares from.
type nodeGPUs struct {
	sys      nvml.SystemInfo
	layout   *vgpu.Layout
	devices  []resourceapi.Device
	counters []resourceapi.CounterSet
	nodes    dra.Nodes
	// all are the GPUs as enumerated, MIG modes and instances included.
	all []nvml.Device
	// mig are the MIG instances published (with --mig-strategy=dra).
	mig dra.MIGInstances
}

// openGPUs opens the GPU backend and describes the node's GPUs; on error
// nothing stays open.
func openGPUs(cfg Config, log *slog.Logger) (nvml.Backend, func(context.Context, *slog.Logger) error, nodeGPUs, error) {
	backend, watch, err := openBackend(cfg, log)
	if err != nil {
		return nil, nil, nodeGPUs{}, err
	}
	n, err := describe(backend, cfg, log)
	if err != nil {
		_ = backend.Close()
		return nil, nil, nodeGPUs{}, err
	}
	return backend, watch, n, nil
}

// describe enumerates the GPUs, cuts them as the agent does and describes
// them as DRA devices.
func describe(backend nvml.Backend, cfg Config, log *slog.Logger) (nodeGPUs, error) {
	devs, err := backend.Devices()
	switch {
	case err != nil && len(devs) == 0:
		return nodeGPUs{}, fmt.Errorf("enumerate GPUs: %w", err)
	case err != nil:
		log.Warn("some gpus could not be enumerated and are not published", "err", err)
	case len(devs) == 0:
		return nodeGPUs{}, gpubackend.ErrNoGPUs
	}
	var n nodeGPUs
	if n.sys, err = backend.System(); err != nil {
		log.Warn("driver version unavailable", "err", err)
	}
	slicing, err := cfg.SliceRules()
	if err != nil {
		return nodeGPUs{}, err
	}
	// A GPU in MIG mode (or about to be) cannot be used whole: it is not
	// published as a shared GPU.
	for _, d := range devs {
		if d.MIG.Enabled() {
			log.Info("gpu in MIG mode: not published as a shared GPU", "gpu", d.Index, "uuid", d.UUID, "mig_current", d.MIG.Current,
				"mig_pending", d.MIG.Pending, "mig_instances_published", cfg.MIGStrategy == contract.MIGStrategyDRA)
		}
	}
	n.all = devs
	devs = nvml.Whole(devs)
	gpus := make([]vgpu.GPU, len(devs))
	n.nodes = dra.Nodes{DevRoot: cfg.DeviceSpecs.DevRoot, Minor: map[string]int{}}
	for i, d := range devs {
		gpus[i] = vgpu.GPU{UUID: d.UUID, Index: d.Index, Model: d.Model, MemoryBytes: d.MemoryBytes}
		n.nodes.Minor[d.UUID] = d.Minor
	}
	if n.layout, err = vgpu.NewLayout(gpus, slicing); err != nil {
		return nodeGPUs{}, fmt.Errorf("slice GPUs: %w", err)
	}
	if n.devices, err = dra.Devices(n.layout, devs, n.sys); err != nil {
		return nodeGPUs{}, err
	}
	if cfg.DRA.ExtendedResource || len(cfg.Driver.Sizes) > 0 {
		n.devices, n.counters = dra.Partitioned(n.devices, cfg.DRA.ExtendedResource, cfg.Driver.Sizes)
	}
	// MIG instances are served by one front end: the device plugin under
	// the mixed or single strategy, the driver under dra.
	if cfg.MIGStrategy == contract.MIGStrategyDRA {
		n.mig = dra.NewMIGInstances(n.all)
		n.devices = append(n.devices, dra.MIGDevices(n.mig, n.sys)...)
		n.nodes.MIG = n.mig.Nodes()
	}
	return n, nil
}

func openBackend(cfg Config, log *slog.Logger) (nvml.Backend, func(context.Context, *slog.Logger) error, error) {
	o := cfg.NVMLOptions()
	o.Logger = log
	b, err := gpubackend.Open(cfg.GPUBackend, cfg.FakeConfig, o)
	return b.Backend, b.Watch, err
}

// kubeClient is the driver's clientset, with its own request rate.
func kubeClient(cfg Config) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	rc.QPS, rc.Burst = float32(cfg.Driver.KubeAPIQPS), cfg.Driver.KubeAPIBurst
	rc.UserAgent = "gpu-dra-driver/" + version
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, nil
}
