// Command gpu-agent is gpuslice's node agent: it cuts the node's GPUs into
// slices and offers them to the kubelet as a device plugin.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/gpuslice/gpuslice/pkg/attribution"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/exporter"
	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/pkg/labels"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/podpolicy"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/sampler"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/fakegpu"
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
	if len(args) > 0 && args[0] == "uninstall" {
		return runUninstall(args[1:], stdout, stderr)
	}
	cfg, err := loadConfig(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage())
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "gpu-agent: %v\n", err)
		return exitConfig
	}
	level, _ := parseLevel(cfg.Log.Level) // Validate checked it.
	hopts := &slog.HandlerOptions{Level: level}
	var handler slog.Handler = slog.NewTextHandler(stderr, hopts)
	if cfg.Log.Format == "json" {
		handler = slog.NewJSONHandler(stderr, hopts)
	}
	log := slog.New(handler)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runAgent(ctx, cfg, log); err != nil {
		log.Error("gpu-agent failed", "err", err)
		fmt.Fprintf(stderr, "gpu-agent: %v\n", err)
		return exitFailed
	}
	log.Info("stopped")
	return exitOK
}

// renderKey names one rendering of /metrics: a sample and what
// enforcement had done when it was taken.
type renderKey struct {
	snap *node.Snapshot
	gen  uint64
}

// runAgent builds the components and runs them until ctx ends or one fails.
func runAgent(ctx context.Context, cfg Config, log *slog.Logger) error {
	// The Kubernetes client is built without I/O; labels and per-pod
	// policies need it and the node's name, and are off without them.
	client, clientErr := kubeClient(cfg.Kubeconfig)
	// /metrics guarded by the API server needs a client whatever the
	// node's name; without one the agent does not start open instead.
	handler := func(h http.Handler) http.Handler { return h }
	if cfg.MetricsAuth == "kubernetes" {
		if clientErr != nil {
			return fmt.Errorf("--metrics-auth=kubernetes needs a Kubernetes client: %w", clientErr)
		}
		auth := client
		handler = func(h http.Handler) http.Handler { return exporter.KubeAuth(h, auth, log) }
	}
	switch {
	case clientErr != nil:
		log.Warn("no kubernetes client: node labels and per-pod compute policies off", "err", clientErr)
	case cfg.NodeName == "":
		log.Warn("no --node-name or $NODE_NAME: node labels and per-pod compute policies off")
		client = nil
	}
	eopts := cfg.enforceOptions(log)
	var policies *podpolicy.Watcher
	if client != nil {
		policies = podpolicy.New(client, cfg.NodeName, podPolicyRefresh, log)
		eopts.PodPolicy = policies.Policy
		rec := events.New(client, cfg.NodeName, log)
		defer rec.Stop()
		eopts.Events = rec
	}

	// One agent per node: wait for a predecessor still running (a
	// force-deleted pod) before enforcing or serving anything.
	if cfg.Enforcement.StateFile != "" {
		release, err := enforce.LockNode(ctx, cfg.Enforcement.StateFile+".lock", log)
		if errors.Is(err, context.Canceled) {
			return nil
		}
		if err != nil {
			return err
		}
		defer release()
	}

	// Thaw whatever a previous agent left frozen before anything else, so a
	// crash loop never leaves containers stopped.
	enforcer, err := enforce.New(eopts)
	if err != nil {
		return err
	}
	defer enforcer.Close()

	backend, fake, err := openBackend(cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := backend.Close(); err != nil {
			log.Warn("close gpu backend", "err", err)
		}
	}()

	devs, err := backend.Devices()
	switch {
	case err != nil && len(devs) == 0:
		return fmt.Errorf("enumerate GPUs: %w", err)
	case err != nil:
		// One broken GPU must not keep the others from being offered.
		log.Warn("some gpus could not be enumerated and are not offered", "err", err)
	case len(devs) == 0:
		return errors.New("no GPUs found on this node")
	}
	sys, err := backend.System()
	if err != nil {
		log.Warn("driver version unavailable", "err", err)
	}
	slicing, _ := cfg.slicing() // Validate checked it.
	layout, err := deviceplugin.NewLayout(devs, slicing)
	if err != nil {
		return fmt.Errorf("slice GPUs: %w", err)
	}
	plugin, err := deviceplugin.New(layout, devs, cfg.pluginOptions(log))
	if err != nil {
		return err
	}
	for _, g := range layout.GPUs() {
		log.Info("gpu", "gpu", g.Index, "uuid", g.UUID, "model", g.Model, "memory_bytes", g.MemoryBytes, "slices", g.Slices, "slice_memory_bytes", g.SliceMemoryBytes)
	}
	log.Info("starting", "version", version, "node", cfg.NodeName, "backend", cfg.GPUBackend, "driver", sys.DriverVersion,
		"cuda", sys.CUDAVersion(), "gpus", len(devs), "slices", layout.TotalSlices(), "resource", cfg.ResourceName)

	podres, err := podresources.New(cfg.podResourcesOptions())
	if err != nil {
		return err
	}
	defer func() { _ = podres.Close() }()
	names := attribution.NewRuntimeState(cfg.RuntimeStateDirs)
	driverLimits := startDriverLimits(cfg, backend, layout, eopts, names, log)
	if driverLimits != nil {
		enforcer.UseDriverLimits(driverLimits)
	}
	sopts := cfg.samplerOptions(log)
	sopts.OnSample = enforcer.Offer // enforcement runs in its own loop, latest snapshot wins
	sopts.Names = names
	smp, err := sampler.New(devs, layout, backend, podres, plugin, sopts)
	if err != nil {
		return err
	}
	exposition := exporter.NewExposition(smp, exporter.Info{Version: version, System: sys, Enforcement: enforcer, MPS: cfg.MPS.Enabled})
	ready := func() bool { return plugin.Connected() && smp.Ready() }

	// Listen before starting anything, so a taken port fails the start.
	lis, err := net.Listen("tcp", cfg.MetricsAddress)
	if err != nil {
		return fmt.Errorf("listen on --metrics-address: %w", err)
	}
	g, ctx := errgroup.WithContext(ctx)
	// Thaw everything the moment the agent is told to stop, whatever the
	// other components take to wind down.
	g.Go(func() error { <-ctx.Done(); enforcer.Close(); return nil })
	g.Go(func() error { return plugin.Run(ctx) })
	g.Go(func() error {
		nvml.KeepWatchingHealth(ctx, backend, plugin.SetHealth, nvml.HealthRetry, log)
		return nil
	})
	g.Go(func() error { return smp.Run(ctx) })
	g.Go(func() error { enforcer.Run(ctx); return nil })
	g.Go(func() error {
		// Every series comes from the sample and enforcement's published
		// view: render once per change of either.
		key := func() any { return renderKey{smp.Snapshot(), enforcer.Generation()} }
		return exporter.Serve(ctx, lis, handler(exporter.Handler(exposition, key, ready, log)), cfg.WebConfigFile, log)
	})
	if client != nil && cfg.NodeLabels {
		startLabels(ctx, g, client, cfg, devs, sys, layout, enforcer, log)
	}
	if policies != nil {
		g.Go(func() error { policies.Run(ctx); return nil })
	}
	if driverLimits != nil {
		g.Go(func() error { return driverLimits.Run(ctx) })
	}
	if fake != nil && cfg.FakeConfig != "" {
		g.Go(func() error { return fakegpu.WatchFile(ctx, cfg.FakeConfig, fake, log) })
	}
	return g.Wait()
}

func openBackend(cfg Config, log *slog.Logger) (nvml.Backend, *fakegpu.Node, error) {
	if cfg.GPUBackend == "nvml" {
		b, err := nvml.New(cfg.nvmlOptions(log))
		if err != nil {
			return nil, nil, err
		}
		return b, nil, nil
	}
	fc := fakegpu.DefaultConfig()
	if cfg.FakeConfig != "" {
		var err error
		if fc, err = fakegpu.LoadFile(cfg.FakeConfig); err != nil {
			return nil, nil, err
		}
	}
	node, err := fakegpu.New(fc)
	if err != nil {
		return nil, nil, err
	}
	return node, node, nil
}

// startDriverLimits returns the driver memory-limit tier, or nil where it
// is off or the driver or host lacks it (the watchdog then holds memory).
func startDriverLimits(cfg Config, backend nvml.Backend, layout *vgpu.Layout, eopts enforce.Options, names attribution.ContainerNames, log *slog.Logger) *enforce.DriverLimits {
	// Only a killing policy enforces; log and off only watch or do nothing.
	if !cfg.Enforcement.DriverMemoryLimits || eopts.Memory != enforce.MemoryKill {
		return nil
	}
	d, err := enforce.NewDriverLimits(enforce.DriverOptions{
		Limiter:    backend,
		CgroupRoot: cfg.CgroupRoot,
		Grants:     enforce.CheckpointGrants(cfg.DevicePluginDir, cfg.ResourceName, layout),
		Names:      names,
		Events:     eopts.Events,
		Logger:     log,
	})
	if err != nil {
		log.Info("driver GPU memory limits unavailable; the memory watchdog holds GPU memory", "reason", err)
		return nil
	}
	log.Info("driver GPU memory limits in force", "cgroup_root", d.Root())
	return d
}

// startLabels starts keeping the node's labels.
func startLabels(ctx context.Context, g *errgroup.Group, client *kube.Client, cfg Config, devs []nvml.Device, sys nvml.SystemInfo, layout *vgpu.Layout, enforcer *enforce.Enforcer, log *slog.Logger) {
	compute, _ := enforcer.Tiers()
	if cfg.MPS.Enabled {
		compute = "mps"
	}
	classes := make([]string, 0, len(devs))
	for _, d := range devs {
		classes = append(classes, nvml.PCIClass(cfg.SysfsRoot, d.PCIBusID))
	}
	machineFile := cfg.MachineTypeFile
	if machineFile == "" {
		machineFile = filepath.Join(cfg.SysfsRoot, "class", "dmi", "id", "product_name")
	}
	machine, err := os.ReadFile(machineFile) //nolint:gosec // the operator's own flag, or sysfs
	if err != nil {
		log.Info("machine type unknown", "file", machineFile, "err", err)
	}
	desired := labels.For(devs, sys, layout, labels.Options{
		GFD: cfg.GFDLabels, Enforcement: compute, MPS: cfg.MPS.Enabled, SharedProduct: cfg.GFDSharedProduct,
		GPUMode: labels.GPUMode(classes), Machine: string(machine),
	})
	w := labels.NewWriter(client, cfg.NodeName, cfg.GFDLabels, log)
	g.Go(func() error { w.Keep(ctx, desired); return nil })
}
