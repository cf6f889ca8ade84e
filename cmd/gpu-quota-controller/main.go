// Command gpu-quota-controller enforces GPUQuota objects
// (gpuslice.io/v1alpha1): slice caps and measured GPU-hour budgets per
// namespace through a ResourceQuota it owns, and reclaim of idle GPU pods,
// from gpuslice's metrics in Prometheus. It runs one active replica, by
// leader election.
//
// It uses plain client-go with shared informers rather than
// controller-runtime: it has no reconcile-per-object shape (every cycle
// evaluates all quotas against one fixed set of PromQL queries), so a
// periodic loop over informer caches is the whole controller, with fewer
// dependencies.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/kueuecheck"
	"github.com/gpuslice/gpuslice/pkg/quota"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

type config struct {
	kubeconfig, promURL, resource, metricsAddr, leNamespace, leID, logLevel, series string
	kueueCheck                                                                      string
	deviceClasses, mappedClasses                                                    []string
	interval, queryTimeout, scrapeInterval, recording                               time.Duration
	leaderElect, printRules                                                         bool
}

func parse(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("gpu-quota-controller", flag.ContinueOnError)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig `file` (in-cluster config when empty)")
	fs.StringVar(&c.promURL, "prometheus-url", "", "Prometheus `URL` holding gpuslice's metrics (required)")
	fs.StringVar(&c.resource, "resource-name", contract.ResourceName, "the extended resource quotas cap")
	fs.DurationVar(&c.interval, "interval", quota.DefaultInterval, "how often every GPUQuota is evaluated")
	fs.DurationVar(&c.queryTimeout, "query-timeout", quota.DefaultQueryTimeout, "deadline of each PromQL query; a cycle whose queries time out reclaims nothing and sets MetricsUnavailable")
	fs.DurationVar(&c.scrapeInterval, "scrape-interval", quota.DefaultScrapeInterval, "how often Prometheus scrapes the agents (the ServiceMonitor's interval): an idle window needs 90% of the samples it implies")
	fs.StringVar(&c.metricsAddr, "metrics-address", ":9446", "address of the controller's own /metrics and /healthz")
	fs.BoolVar(&c.leaderElect, "leader-elect", true, "run only while holding the leader lease")
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "gpuslice"
	}
	fs.StringVar(&c.leNamespace, "leader-election-namespace", ns, "namespace of the leader lease")
	fs.StringVar(&c.leID, "leader-election-id", "gpuslice-quota-controller", "name of the leader lease")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	c.series = string(quota.DefaultSeries)
	fs.StringVar(&c.series, "agent-series", c.series, "PromQL label `matchers` only the agents' own scrape gives a series (the chart's ServiceMonitor sets "+quota.TrustLabel+" to its namespace): gpuslice_* series without them are never believed")
	fs.Func("dra-device-classes", "comma-separated DRA device `classes` whose claims reach gpuslice's driver: capped, closed by budgets, reclaimed when idle (the first gets maxClaimSlices' room)", func(v string) (err error) {
		c.deviceClasses, err = parseClasses(v)
		return err
	})
	fs.Func("dra-extended-resource-classes", "comma-separated DRA device `classes` that map --resource-name (extendedResourceName): Kubernetes counts their claims under requests.<resource>, so they are not counted again as claims", func(v string) (err error) {
		c.mappedClasses, err = parseClasses(v)
		return err
	})
	fs.StringVar(&c.kueueCheck, "kueue-admission-check", "", "serve Kueue AdmissionChecks whose controllerName is this `name` (gpuslice's is "+kueuecheck.DefaultControllerName+"): a Workload waiting on one is admitted only while its namespace's GPU-hour budget has room; empty: off (Kueue's CRDs must be installed when set)")
	fs.DurationVar(&c.recording, "recording-rules-interval", 0, "read budgets from gpuslice's recording rules (--print-recording-rules), which Prometheus evaluates every this `interval`, over the windows they cover (the agents' own series otherwise); 0: off, every budget reads the agents' series")
	fs.BoolVar(&c.printRules, "print-recording-rules", false, "print the recording rule group for --agent-series, --recording-rules-interval and --scrape-interval (YAML for a rule file's groups list) and exit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.printRules {
		return c, nil
	}
	if c.kueueCheck != "" && (len(c.kueueCheck) > 253 || strings.ContainsFunc(c.kueueCheck, unicode.IsSpace)) {
		return c, fmt.Errorf("--kueue-admission-check %q is not a controller name", c.kueueCheck)
	}
	for _, class := range c.mappedClasses {
		if slices.Contains(c.deviceClasses, class) {
			return c, fmt.Errorf("device class %q is in both --dra-device-classes and --dra-extended-resource-classes: its claims are counted either as claims or as the resource, not both", class)
		}
	}
	timeoutSet := false
	fs.Visit(func(f *flag.Flag) { timeoutSet = timeoutSet || f.Name == "query-timeout" })
	if !timeoutSet {
		c.queryTimeout = min(c.queryTimeout, c.interval) // a short --interval alone is fine
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected arguments %v", fs.Args())
	case c.promURL == "":
		return c, errors.New("--prometheus-url is required")
	case c.interval < time.Second:
		return c, fmt.Errorf("--interval %s is under 1s", c.interval)
	case c.queryTimeout <= 0 || c.queryTimeout > c.interval:
		return c, fmt.Errorf("--query-timeout %s must be positive and at most --interval %s", c.queryTimeout, c.interval)
	case c.scrapeInterval <= 0:
		return c, fmt.Errorf("--scrape-interval %s must be positive", c.scrapeInterval)
	case c.series == "":
		return c, errors.New("--agent-series is required: believing every gpuslice_* series lets a tenant's scrape target charge, reclaim or blind others")
	}
	if err := quota.Series(c.series).Validate(); err != nil {
		return c, fmt.Errorf("--agent-series: %w", err)
	}
	if err := checkRecording(c); err != nil {
		return c, err
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.logLevel)); err != nil {
		return c, fmt.Errorf("--log-level: %w", err)
	}
	return c, nil
}

// checkRecording refuses recording rules the controller could not read.
func checkRecording(c config) error {
	if c.recording < 0 {
		return fmt.Errorf("--recording-rules-interval %s is negative", c.recording)
	}
	if c.recording > 0 {
		if _, err := quota.RecordingRules(quota.Series(c.series), c.recording, c.scrapeInterval); err != nil {
			return fmt.Errorf("--recording-rules-interval: %w", err)
		}
	}
	return nil
}

// parseClasses reads a comma-separated list of DeviceClass names.
func parseClasses(v string) ([]string, error) {
	var out []string
	for class := range strings.SplitSeq(v, ",") {
		class = strings.TrimSpace(class)
		if errs := validation.IsDNS1123Subdomain(class); len(errs) > 0 {
			return nil, fmt.Errorf("device class %q: %s", class, strings.Join(errs, "; "))
		}
		if slices.Contains(out, class) {
			return nil, fmt.Errorf("device class %q listed twice", class)
		}
		out = append(out, class)
	}
	return out, nil
}

func run(args []string) int {
	c, err := parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gpu-quota-controller: %v\n", err)
		return 2
	}
	if c.printRules {
		return printRules(c)
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.logLevel))
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, c, log); err != nil {
		log.Error("gpu-quota-controller failed", "err", err)
		return 1
	}
	return 0
}

// printRules writes the recording rule group the flags describe.
func printRules(c config) int {
	interval := c.recording
	if interval == 0 {
		interval = time.Minute
	}
	rules, err := quota.RecordingRules(quota.Series(c.series), interval, c.scrapeInterval)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gpu-quota-controller: %v\n", err)
		return 2
	}
	fmt.Print(rules)
	return 0
}

func serve(ctx context.Context, c config, log *slog.Logger) error {
	var cfg *rest.Config
	var err error
	if c.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kubernetes config: %w", err)
	}
	// The first cycle on a big cluster writes a ResourceQuota and a status
	// per namespace; client-go's default of 5 requests/s would take minutes.
	cfg.QPS, cfg.Burst = 50, 100
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	prom, err := quota.NewQuerier(c.promURL)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	opts := quota.Options{Resource: c.resource, DeviceClasses: c.deviceClasses, MappedClasses: c.mappedClasses, Interval: c.interval, QueryTimeout: c.queryTimeout,
		ScrapeInterval: c.scrapeInterval, Series: quota.Series(c.series), Recording: quota.Recording{Interval: c.recording}, Logger: log, Registry: reg, KueueCheck: c.kueueCheck != ""}
	// The Kueue check judges from the quota controller's budgets; the quota
	// controller reclaims idle Kueue pods through the check's Workloads.
	var ctrl *quota.Controller
	var check *kueuecheck.Controller
	if c.kueueCheck != "" {
		check = kueuecheck.New(dyn, kueuecheck.BudgetsFunc(func(ns string) quota.BudgetState { return ctrl.BudgetOf(ns) }),
			kueuecheck.Options{ControllerName: c.kueueCheck, Interval: c.interval, Resource: c.resource, Logger: log})
		opts.Reclaimer, opts.Queues = check, check
	}
	ctrl = quota.New(kube, dyn, prom, opts)

	lis, err := net.Listen("tcp", c.metricsAddr)
	if err != nil {
		return fmt.Errorf("listen on --metrics-address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !ctrl.Healthy(time.Now()) {
			http.Error(w, fmt.Sprintf("no evaluation cycle completed in %d intervals", quota.StallCycles), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	defer func() { _ = srv.Close() }()
	log.Info("starting", "prometheus", c.promURL, "interval", c.interval, "metrics", lis.Addr().String(), "leader_elect", c.leaderElect)

	run := ctrl.Run
	if check != nil {
		run = func(ctx context.Context) error { return both(ctx, ctrl.Run, check.Run) }
	}
	if !c.leaderElect {
		return run(ctx)
	}
	id, _ := os.Hostname()
	return runElected(ctx, kube, c.leNamespace, c.leID, fmt.Sprintf("%s-%d", id, os.Getpid()), run, log)
}

// both runs a and b until both return; the first to fail ends the other.
func both(ctx context.Context, a, b func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	for _, f := range []func(context.Context) error{a, b} {
		go func() {
			err := f(ctx)
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	return errors.Join(<-errs, <-errs)
}

// runElected runs run only while holding the Lease namespace/name as id,
// and hands the Lease back when ctx ends, so a standby takes over at its
// next retry rather than after the lease expires.
func runElected(ctx context.Context, kube kubernetes.Interface, namespace, name, id string, run func(context.Context) error, log *slog.Logger) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	// The elector starts run on a goroutine of its own and does not wait
	// for it: its result is handed over under a lock, and waited for once
	// it has started.
	var (
		mu      sync.Mutex
		running sync.WaitGroup
		runErr  error
	)
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock: lock, ReleaseOnCancel: true,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				mu.Lock()
				running.Add(1)
				mu.Unlock()
				defer running.Done()
				log.Info("leading", "identity", id)
				err := run(ctx)
				mu.Lock()
				runErr = err
				mu.Unlock()
			},
			OnStoppedLeading: func() { log.Info("stopped leading", "identity", id) },
		},
	})
	mu.Lock()
	mu.Unlock() //nolint:staticcheck // an empty critical section: orders a started run's Add before Wait
	running.Wait()
	mu.Lock()
	defer mu.Unlock()
	return runErr
}
