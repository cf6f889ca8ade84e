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
	"sync/atomic"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
	"github.com/gpuslice/gpuslice/internal/nodeconfig"
	"github.com/gpuslice/gpuslice/pkg/claimstate"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/exporter"
	"github.com/gpuslice/gpuslice/pkg/gpuhealth"
	"github.com/gpuslice/gpuslice/pkg/health"
	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
	"github.com/gpuslice/gpuslice/pkg/labels"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nodelock"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/podpolicy"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/sampler"
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
	hopts := &slog.HandlerOptions{Level: cfg.LogLevel}
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

// runAgent serves the probes from the start, then builds the components
// and runs them until ctx ends or one fails.
func runAgent(ctx context.Context, cfg Resolved, log *slog.Logger) error {
	probes := health.NewState("starting")
	return health.Around(ctx, cfg.HealthAddress, probes, log, func(ctx context.Context) error { return serveAgent(ctx, cfg, probes, log) })
}

// serveAgent builds the components and runs them until ctx ends or one
// fails; probes says how far it got.
func serveAgent(ctx context.Context, cfg Resolved, probes *health.State, log *slog.Logger) error {
	k, err := newKubeParts(cfg, log)
	if err != nil {
		return err
	}
	defer k.close()
	ns, nsErr := cgroupNamespace(cfg, log)
	eopts := cfg.Enforce
	eopts.Logger, eopts.Events, eopts.Namespace, eopts.NamespaceErr = log, k.events, ns, nsErr
	if k.policies != nil {
		eopts.PodPolicy, eopts.PodByUID = k.policies.Policy, k.policies.Pod
	}
	enforcer, release, err := startEnforcer(ctx, eopts, probes, log)
	if err != nil || enforcer == nil {
		return err
	}
	defer release()
	gpus, err := openGPUs(cfg, log)
	if reason := gpubackend.NoGPUReason(err); reason != "" {
		return idleWithoutGPUs(ctx, cfg, k, reason, err, probes, log)
	}
	if err != nil {
		return err
	}
	defer gpus.close(log)
	requireEnforcement(cfg, enforcer, gpus.plugin, log)
	podres, err := podresources.New(cfg.PodResources)
	if err != nil {
		return err
	}
	defer func() { _ = podres.Close() }()
	names := host.NewRuntimeState(cfg.RuntimeStateDirs)
	driverLimits := useDriverTier(cfg, gpus, enforcer, eopts, names, podres, log)
	smp, err := sampler.New(gpus.whole, gpus.held, gpus.backend, podres, gpus.health, samplerOptions(cfg, k, names, ns, enforcer, gpus, log))
	if err != nil {
		return err
	}
	// Listen before starting anything, so a taken port fails the start.
	lis, err := net.Listen("tcp", cfg.MetricsAddress)
	if err != nil {
		return fmt.Errorf("listen on --metrics-address: %w", err)
	}
	probes.Set(readiness(gpus, smp))
	g, ctx := errgroup.WithContext(ctx)
	// Thaw everything the moment the agent is told to stop, whatever the
	// other components take to wind down.
	g.Go(func() error { <-ctx.Done(); enforcer.Close(); return nil })
	g.Go(func() error { return gpus.plugin.Run(ctx) })
	g.Go(func() error { return gpus.mig.Run(ctx) })
	layoutChanged := make(chan struct{}, 1)
	g.Go(func() error { return followMIG(ctx, gpus, cfg.Health.ProbeInterval.Duration, layoutChanged, log) })
	g.Go(func() error { gpus.health.Run(ctx, gpus.backend, gpuhealth.Retry); return nil })
	g.Go(func() error { return smp.Run(ctx) })
	g.Go(func() error { enforcer.Run(ctx); return nil })
	g.Go(func() error { return serveMetrics(ctx, lis, cfg, k, gpus, enforcer, smp, probes, log) })
	writeNode(ctx, g, cfg, k.client, gpus, enforcer, smp, layoutChanged, log)
	if k.policies != nil {
		g.Go(func() error { k.policies.Run(ctx); return nil })
	}
	if driverLimits != nil {
		g.Go(func() error { return driverLimits.Run(ctx) })
	}
	if cfg.DRA.Enabled {
		// How each claim's share is held, for the DRA driver to show in
		// the claim's status.
		w := claimstate.NewWriter(contract.ClaimEnforcementPath(cfg.DRA.PreparedClaims))
		g.Go(func() error {
			claimstate.Run(ctx, cfg.SampleInterval.Duration, smp.Snapshot, enforcer, w, log)
			return nil
		})
	}
	if gpus.watch != nil {
		g.Go(func() error { return gpus.watch(ctx, log) })
	}
	return g.Wait()
}

// serveMetrics serves the node's exposition on lis until ctx ends.
func serveMetrics(ctx context.Context, lis net.Listener, cfg Resolved, k kubeParts, gpus *gpus, enforcer *enforce.Enforcer, smp *sampler.Sampler, probes *health.State, log *slog.Logger) error {
	exposition := exporter.NewExposition(smp, exporter.Info{Version: version, System: gpus.sys, Enforcement: enforcer,
		MIG: func() []nvml.Device { return *gpus.current.Load() }, MIGStrategy: cfg.MIGStrategy, Healthy: gpus.health.Healthy,
		MIGSliceResource: gpus.mig.SliceResource})
	ready := func() bool { return probes.Ready() == nil }
	return exporter.Serve(ctx, lis, k.guard(exporter.Handler(exposition, exposition.Key, ready, log)), cfg.WebConfigFile, log)
}

// readiness is ready when the plugin is registered with a live kubelet and
// the GPUs were sampled.
func readiness(g *gpus, smp *sampler.Sampler) func() error {
	return func() error {
		switch {
		case !g.plugin.Connected():
			return errors.New("not registered with a live kubelet")
		case !smp.Ready():
			return errors.New("not sampled yet")
		}
		return g.mig.Connected()
	}
}

// cgroupNamespace finds where the agent's cgroup namespace is rooted in the
// host's hierarchies (a private one, as containerd gives a non-privileged
// container on a unified host), so the cgroup paths it reads of other
// containers can be made host paths. Without it those paths stay
// unresolved, and their containers are reported unenforceable.
func cgroupNamespace(cfg Resolved, log *slog.Logger) (host.Namespace, error) {
	ns, err := host.DiscoverOwnNamespace(cfg.CgroupRoot, cfg.ProcRoot)
	switch {
	case err != nil:
		log.Error("cannot place the agent's cgroup namespace in the host's hierarchy; containers whose cgroups it cannot resolve are reported unenforceable", "err", err)
	case ns.Private():
		log.Info("agent runs in a private cgroup namespace; cgroup paths are resolved against its roots", "roots", ns.String())
	}
	return ns, err
}

// requireEnforcement withholds every slice when the administrator
// required enforcement and a tier cannot engage on the node; otherwise a
// tier that cannot engage is only reported (metrics, log).
func requireEnforcement(cfg Resolved, enforcer *enforce.Enforcer, plugin *deviceplugin.Plugin, log *slog.Logger) {
	why := enforcer.Node().CannotEngage()
	if why == "" {
		return
	}
	if cfg.Enforcement.Mode == nodeconfig.ModeRequired {
		plugin.Withhold(why)
		return
	}
	log.Warn("enforcement cannot engage on this node; slices are offered anyway (--enforcement=best-effort)", "reason", why)
}

// startEnforcer takes the node lock, waiting for a predecessor still
// running (a force-deleted pod) before enforcing or serving anything, then
// builds the enforcer, which thaws whatever a previous agent left frozen
// before anything else, so a crash loop never leaves containers stopped.
// It returns a nil enforcer when ctx ended while waiting. release closes
// the enforcer and releases the lock.
func startEnforcer(ctx context.Context, o enforce.Options, probes *health.State, log *slog.Logger) (*enforce.Enforcer, func(), error) {
	unlock := func() {}
	if o.State.Path != "" {
		var err error
		probes.NotReady("waiting for the node lock " + o.State.Path + ".lock (a predecessor still runs)")
		unlock, err = nodelock.Lock(ctx, o.State.Path+".lock", "gpu-agent", log)
		if errors.Is(err, context.Canceled) {
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, err
		}
	}
	probes.NotReady("starting: the node lock is taken")
	enforcer, err := enforce.New(o)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return enforcer, func() { enforcer.Close(); unlock() }, nil
}

// kubeParts are the agent's uses of the Kubernetes API; client, policies
// and events are nil or discarding without a client or a node name.
type kubeParts struct {
	client   *kube.Client
	policies *podpolicy.Watcher
	events   events.Recorder
	// guard wraps /metrics: the API server's authentication and
	// authorization under --metrics-auth=kubernetes.
	guard func(http.Handler) http.Handler
	close func()
}

func newKubeParts(cfg Resolved, log *slog.Logger) (kubeParts, error) {
	k := kubeParts{events: events.Discard{}, guard: func(h http.Handler) http.Handler { return h }, close: func() {}}
	// The client is built without I/O; labels and per-pod policies need it
	// and the node's name, and are off without them.
	client, err := kube.New(cfg.Kubeconfig)
	// /metrics guarded by the API server needs a client whatever the
	// node's name; without one the agent does not start open instead.
	if cfg.MetricsAuth == "kubernetes" {
		if err != nil {
			return k, fmt.Errorf("--metrics-auth=kubernetes needs a Kubernetes client: %w", err)
		}
		k.guard = func(h http.Handler) http.Handler { return exporter.KubeAuth(h, client, log) }
	}
	switch {
	case err != nil:
		log.Warn("no kubernetes client: node labels and per-pod compute policies off", "err", err)
		return k, nil
	case cfg.NodeName == "":
		log.Warn("no --node-name or $NODE_NAME: node labels and per-pod compute policies off")
		return k, nil
	}
	rec := events.New(client, cfg.NodeName, log)
	k.client, k.events, k.close = client, rec, rec.Stop
	k.policies = podpolicy.New(client, cfg.NodeName, podPolicyRefresh, log)
	return k, nil
}

// gpus is the node's GPUs, as the backend enumerates them, cut into slices
// and offered by the device plugin.
type gpus struct {
	backend nvml.Backend
	watch   func(context.Context, *slog.Logger) error // follows the fake node's file; nil on NVML
	devs    []nvml.Device
	whole   []nvml.Device // the GPUs not in MIG mode: cut into slices
	sys     nvml.SystemInfo
	layout  *vgpu.Layout
	// held reads the slices containers hold: the whole GPUs' layout and
	// the sliced MIG instances'.
	held   *vgpu.Layout
	plugin *deviceplugin.Plugin
	mig    *deviceplugin.MIGSet
	// current is the GPUs as last read, MIG layouts included: devs at
	// start, then what followMIG reads.
	current atomic.Pointer[[]nvml.Device]
	health  *gpuhealth.Monitor
}

func openGPUs(cfg Resolved, log *slog.Logger) (*gpus, error) {
	g := &gpus{}
	var err error
	if g.backend, g.watch, err = openBackend(cfg, log); err != nil {
		return nil, err
	}
	g.devs, err = g.backend.Devices()
	switch {
	case err != nil && len(g.devs) == 0:
		g.close(log)
		return nil, fmt.Errorf("enumerate GPUs: %w", err)
	case err != nil:
		// One broken GPU must not keep the others from being offered.
		log.Warn("some gpus could not be enumerated and are not offered", "err", err)
	case len(g.devs) == 0:
		g.close(log)
		return nil, gpubackend.ErrNoGPUs
	}
	if g.sys, err = g.backend.System(); err != nil {
		log.Warn("driver version unavailable", "err", err)
	}
	// A GPU in MIG mode (or about to be) cannot be used whole.
	g.whole = nvml.Whole(g.devs)
	if g.layout, err = deviceplugin.NewLayout(g.whole, cfg.Slicing); err != nil {
		g.close(log)
		return nil, fmt.Errorf("slice GPUs: %w", err)
	}
	popts := cfg.Plugin
	popts.Logger = log
	if g.plugin, err = deviceplugin.New(g.layout, g.whole, popts); err != nil {
		g.close(log)
		return nil, err
	}
	if g.mig, err = openMIG(cfg, g.backend, g.devs, log); err != nil {
		g.close(log)
		return nil, err
	}
	if g.held, err = g.layout.With(g.mig.SliceLayout()); err != nil {
		g.close(log)
		return nil, err
	}
	g.current.Store(&g.devs)
	// The one record of GPU health: the plugin offers by it, the sampler
	// reports it.
	g.health = gpuhealth.New(nvml.UUIDs(g.devs), log)
	g.health.Subscribe(g.plugin.SetHealth)
	g.health.Subscribe(g.mig.SetHealth)
	log.Info("starting", "version", version, "node", cfg.NodeName, "backend", cfg.GPUBackend, "driver", g.sys.DriverVersion,
		"cuda", g.sys.CUDAVersion(), "gpus", len(g.devs), "slices", g.layout.TotalSlices(), "resource", cfg.ResourceName, "mig_resources", g.mig.Resources())
	return g, nil
}

func (g *gpus) close(log *slog.Logger) {
	if err := g.backend.Close(); err != nil {
		log.Warn("close gpu backend", "err", err)
	}
}

func openBackend(cfg Resolved, log *slog.Logger) (nvml.Backend, func(context.Context, *slog.Logger) error, error) {
	o := cfg.NVML
	o.Logger = log
	b, err := gpubackend.Open(cfg.GPUBackend, cfg.FakeConfig, o)
	return b.Backend, b.Watch, err
}

// samplerOptions are the configured sampler's, wired to the runtime's
// records, the pods' UIDs (DRA), the enforcer and the GPUs' MIG layouts
// as followMIG last read them (their instances are read as devices).
func samplerOptions(cfg Resolved, k kubeParts, names node.ContainerNames, ns host.Namespace, enforcer *enforce.Enforcer, g *gpus, log *slog.Logger) sampler.Options {
	o := cfg.Sampler
	o.Logger, o.Names, o.Namespace = log, names, ns
	o.MIG = func() []nvml.Device { return *g.current.Load() }
	if k.policies != nil {
		o.Pods = k.policies // DRA: the pods' UIDs the API server gives
	}
	o.OnSample = enforcer.Offer // enforcement runs in its own loop, latest snapshot wins
	return o
}

// useDriverTier hands the driver memory-limit tier to the enforcer where
// the options ask for it and the driver and host have it, and returns it
// to be run; nil otherwise (the watchdog then holds memory).
func useDriverTier(cfg Resolved, g *gpus, enforcer *enforce.Enforcer, eopts enforce.Options, names node.ContainerNames, podres *podresources.Client, log *slog.Logger) *enforce.DriverLimits {
	// Its own reader: the tier's watch goroutine alone calls it.
	pods := kubeletstate.NewPods(kubeletstate.Options{
		PluginDir: cfg.DevicePluginDir, ResourceName: cfg.ResourceName, Layout: g.held,
		Assignments: podres, DRA: cfg.DRA.Enabled, PreparedClaims: cfg.DRA.PreparedClaims,
	})
	d, err := enforce.NewDriverTier(eopts, enforce.DriverOptions{
		Limiter:    g.backend,
		CgroupRoot: cfg.CgroupRoot,
		Holdings:   pods.Holdings,
		Names:      names,
		Events:     eopts.Events,
		Logger:     log,
	})
	switch {
	case errors.Is(err, enforce.ErrDriverTierOff):
		return nil
	case err != nil:
		log.Info("driver GPU memory limits unavailable; the memory watchdog holds GPU memory", "reason", err)
		return nil
	}
	log.Info("driver GPU memory limits in force", "cgroup_root", d.Root())
	enforcer.UseDriverLimits(d)
	return d
}

// nodeLabels are the labels the agent keeps on its node.
func nodeLabels(cfg Resolved, g *gpus, enforcer *enforce.Enforcer, log *slog.Logger) map[string]string {
	host, err := labels.ReadHost(cfg.SysfsRoot, cfg.MachineTypeFile, g.devs)
	if err != nil {
		log.Info("labels without the machine type", "err", err)
	}
	compute, _ := enforcer.Tiers()
	if enforce.CannotHold(enforcer.Node().Compute) {
		compute = "unavailable" // the node cannot hold the shares it offers
	}
	return labels.For(*g.current.Load(), g.sys, g.layout, labels.Options{
		GFD: cfg.GFDLabels, Enforcement: compute, MPS: cfg.MPS.Enabled, SharedProduct: cfg.GFDSharedProduct,
		GPUMode: host.GPUMode, Machine: host.Machine, MIGStrategy: cfg.MIGStrategy,
	})
}
