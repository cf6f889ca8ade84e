package quota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/gpuslice/gpuslice/api/v1alpha1"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corelisters "k8s.io/client-go/listers/core/v1"
	resourcelisters "k8s.io/client-go/listers/resource/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// GVR is the GPUQuota resource.
var GVR = v1alpha1.Resource

// applyWorkers is how many namespaces are evaluated and written at once.
const applyWorkers = 8

// QuotaName is the ResourceQuota the controller owns in each namespace.
const QuotaName = "gpuslice-gpu-quota"

// Options configure the Controller.
type Options struct {
	// Resource is the extended resource quotas cap (nvidia.com/vgpu).
	Resource string
	// Interval is how often every quota is evaluated.
	Interval time.Duration
	// Logger receives decisions and failures.
	Logger *slog.Logger
	// Registry receives the controller's own metrics; nil: none.
	Registry prometheus.Registerer
	// QueryTimeout bounds each PromQL query.
	QueryTimeout time.Duration
	// ScrapeInterval is how often Prometheus scrapes the agents, for how
	// many samples an idle window needs.
	ScrapeInterval time.Duration
	// DeviceClasses are the DRA device classes whose claims reach the
	// gpuslice driver's devices: their claims count against caps, budgets
	// close them, and their pods are reclaimed when idle. Empty: the
	// controller reads no DRA objects.
	DeviceClasses []string
	// MappedClasses are the DRA device classes that map Resource
	// (extendedResourceName): their claims are counted under
	// requests.<Resource>, as the pods asking for it, never as claims.
	MappedClasses []string
	// Series says which series are the agents' (see Series); empty is
	// DefaultSeries, never every series.
	Series Series
	// Recording, when on, reads budgets from the recording rules'
	// namespace-level series (RecordingRules) over the windows they cover.
	Recording Recording
	// KueueCheck is true when a Kueue AdmissionCheck (pkg/kueuecheck) runs
	// beside the controller, holding GPUQuotas with admission Kueue.
	KueueCheck bool
	// Reclaimer, when set, reclaims idle pods of GPUQuotas with admission
	// Kueue through their Kueue Workloads instead of evicting them.
	Reclaimer Reclaimer
	// Queues, when set, names the queues through which a namespace's work
	// escapes the Kueue check, for GPUQuotas with admission Kueue.
	Queues Queues
}

// Queues tells which of a namespace's Kueue LocalQueues lead to no check
// holding the budget.
type Queues interface {
	// Uncovered names them; known is false while Kueue's objects are not
	// listed yet.
	Uncovered(namespace string) (queues []string, known bool)
}

// Reclaimer reclaims an idle pod's GPUs through the queueing system that
// runs it (Kueue), so the system requeues its work, rather than evicting
// the pod under it.
type Reclaimer interface {
	// Reclaim reclaims pod through its owner, saying why; false when the
	// pod has no such owner (it is then evicted as any other).
	Reclaim(ctx context.Context, pod *corev1.Pod, why string) (bool, error)
}

// Defaults for Options.
const (
	DefaultInterval       = 30 * time.Second
	DefaultQueryTimeout   = 20 * time.Second
	DefaultScrapeInterval = 30 * time.Second
	// MaxUnknownInStatus bounds the pods status.unknownPods lists, so that
	// a Prometheus that lost its history cannot grow a GPUQuota toward the
	// API server's object size limit.
	MaxUnknownInStatus = 20
	// StallCycles is how many intervals may pass with no completed cycle
	// before Healthy reports the controller wedged.
	StallCycles = 3
)

// Controller evaluates every GPUQuota each interval from informer caches
// and one fixed set of PromQL queries, and carries out the decisions.
type Controller struct {
	kube   kubernetes.Interface
	dyn    dynamic.Interface
	prom   Querier
	opts   Options
	log    *slog.Logger
	events record.EventRecorder

	pods    corelisters.PodLister
	quotas  corelisters.ResourceQuotaLister
	claims  resourcelisters.ResourceClaimLister // nil without DeviceClasses
	rslices resourcelisters.ResourceSliceLister // the driver's only
	gpuq    cache.GenericLister
	synced  []cache.InformerSynced
	start   func(stop <-chan struct{})
	mu      sync.Mutex
	last    map[string]Decision // by namespace
	budgets map[string]BudgetState
	// recorded is, by budget key, whether the last cycle that could tell
	// read it from the recording rules.
	recorded map[string]bool
	written  map[types.UID]written
	metrics  controllerMetrics
	// started is when Run started (zero while not running: a standby
	// replica); completed when a cycle last completed.
	started, completed time.Time
	// report is the last cycle's per-namespace state, for the collector;
	// next the one being built.
	report, next map[string]nsReport
}

// nsReport is one namespace's state after a cycle.
type nsReport struct {
	usedSlices, usedHours, idle, unknown float64
	limit, budget                        *float64
	exhausted                            bool
	// claimSlices is what its claims hold (-1: claims not read);
	// claimLimits the claim-device limits by class.
	claimSlices float64
	claimLimits map[string]int64
	adminClaims float64
}

// written is the last status the controller wrote for a GPUQuota: a status
// that has not changed is written again only after statusHeartbeat, so a
// steady cluster costs no API writes per cycle.
type written struct {
	status string
	at     time.Time
}

// statusHeartbeat bounds how stale status.lastEvaluationTime and
// usedGPUHours get; each GPUQuota gets its own share of a further
// statusHeartbeat, so rewrites spread over cycles.
const statusHeartbeat = time.Minute

func heartbeat(uid types.UID) time.Duration {
	var h uint32
	for _, b := range []byte(uid) {
		h = h*31 + uint32(b)
	}
	return statusHeartbeat + time.Duration(h%1000)*statusHeartbeat/1000
}

type controllerMetrics struct {
	cycles, promErrors, evictions, annotations, quotaUpdates prometheus.Counter
	unknown                                                  prometheus.Gauge
	duration                                                 prometheus.Histogram
	queries                                                  prometheus.Gauge
	recorded                                                 *prometheus.GaugeVec
}

// New builds a controller; Run starts it.
func New(kube kubernetes.Interface, dyn dynamic.Interface, prom Querier, opts Options) *Controller {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Resource == "" {
		opts.Resource = contract.ResourceName
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.QueryTimeout <= 0 {
		opts.QueryTimeout = DefaultQueryTimeout
	}
	if opts.ScrapeInterval <= 0 {
		opts.ScrapeInterval = DefaultScrapeInterval
	}
	if opts.Series == "" {
		opts.Series = DefaultSeries
	}
	f := informers.NewSharedInformerFactory(kube, 0)
	// Only the ResourceQuota it owns: RBAC grants list and watch by name.
	rqf := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + QuotaName
	}))
	df := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	pods, rqs, gq := f.Core().V1().Pods(), rqf.Core().V1().ResourceQuotas(), df.ForResource(GVR)
	// Cache only what is read of each pod. Before any start: it cannot fail.
	_ = pods.Informer().SetTransform(trimPod)
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedEventSink{kube: kube})
	c := &Controller{
		kube: kube, dyn: dyn, prom: prom, opts: opts, log: opts.Logger,
		events: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "gpuslice-quota-controller"}),
		pods:   pods.Lister(), quotas: rqs.Lister(), gpuq: gq.Lister(),
		synced:  []cache.InformerSynced{pods.Informer().HasSynced, rqs.Informer().HasSynced, gq.Informer().HasSynced},
		last:    map[string]Decision{},
		budgets: map[string]BudgetState{},
		written: map[types.UID]written{},
		next:    map[string]nsReport{},
	}
	c.start = func(stop <-chan struct{}) { f.Start(stop); rqf.Start(stop); df.Start(stop) }
	if len(opts.DeviceClasses) > 0 {
		// Only the driver's ResourceSlices: their devices' sizes.
		sf := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "spec.driver=" + contract.DRADriverName
		}))
		claims, rslices := f.Resource().V1().ResourceClaims(), sf.Resource().V1().ResourceSlices()
		c.claims, c.rslices = claims.Lister(), rslices.Lister()
		c.synced = append(c.synced, claims.Informer().HasSynced, rslices.Informer().HasSynced)
		c.start = func(stop <-chan struct{}) { f.Start(stop); rqf.Start(stop); df.Start(stop); sf.Start(stop) }
	}
	m := &c.metrics
	m.cycles = prometheus.NewCounter(prometheus.CounterOpts{Name: "gpuslice_quota_evaluations_total", Help: "Evaluation cycles run."})
	m.promErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "gpuslice_quota_prometheus_errors_total", Help: "Cycles whose Prometheus queries failed; the last decisions were kept."})
	m.evictions = prometheus.NewCounter(prometheus.CounterOpts{Name: "gpuslice_quota_evictions_total", Help: "Idle pods evicted."})
	m.annotations = prometheus.NewCounter(prometheus.CounterOpts{Name: "gpuslice_quota_idle_annotations_total", Help: "Idle pods annotated."})
	m.quotaUpdates = prometheus.NewCounter(prometheus.CounterOpts{Name: "gpuslice_quota_resourcequota_updates_total", Help: "ResourceQuota limits created, changed or removed."})
	m.duration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gpuslice_quota_evaluation_duration_seconds", Help: "Time one evaluation cycle took.", Buckets: prometheus.DefBuckets})
	m.queries = prometheus.NewGauge(prometheus.GaugeOpts{Name: "gpuslice_quota_prometheus_queries", Help: "PromQL queries the last cycle made."})
	m.recorded = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gpuslice_quota_budget_recorded",
		Help: "With recording rules on: 1 when the last cycle read the budget (source/window) from the rules' namespace-level series, 0 when from the agents' own because the rules do not cover its window."}, []string{"budget"})
	m.unknown = prometheus.NewGauge(prometheus.GaugeOpts{Name: "gpuslice_quota_idleness_unknown_pods",
		Help: "Pods old enough to judge whose idleness the last cycle could not show from Prometheus (missing, partial or invalid samples, or a blind agent); never reclaimed."})
	if opts.Registry != nil {
		opts.Registry.MustRegister(c.collectors()...)
	}
	return c
}

// typedEventSink writes Events through the typed client.
type typedEventSink struct{ kube kubernetes.Interface }

func (s *typedEventSink) Create(e *corev1.Event) (*corev1.Event, error) {
	return s.kube.CoreV1().Events(e.Namespace).Create(context.Background(), e, metav1.CreateOptions{})
}

func (s *typedEventSink) Update(e *corev1.Event) (*corev1.Event, error) {
	return s.kube.CoreV1().Events(e.Namespace).Update(context.Background(), e, metav1.UpdateOptions{})
}

func (s *typedEventSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	return s.kube.CoreV1().Events(e.Namespace).Patch(context.Background(), e.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
}

// Start starts the informers and waits for their caches.
func (c *Controller) Start(ctx context.Context) error {
	c.start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return errors.New("informer caches did not sync")
	}
	return nil
}

// Run starts the informers and evaluates every interval until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.mu.Lock()
	c.started, c.completed = time.Now(), time.Time{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.started = time.Time{}
		c.mu.Unlock()
	}()
	if err := c.Start(ctx); err != nil {
		return err
	}
	t := time.NewTicker(c.opts.Interval)
	defer t.Stop()
	for {
		if _, err := c.Evaluate(ctx, time.Now()); err != nil && ctx.Err() == nil {
			c.log.Error("evaluation", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Evaluate runs one cycle: every GPUQuota, one set of queries. It
// returns how many PromQL queries the cycle made.
func (c *Controller) Evaluate(ctx context.Context, now time.Time) (int, error) {
	start := time.Now()
	defer func() { c.metrics.cycles.Inc(); c.metrics.duration.Observe(time.Since(start).Seconds()) }()
	byNS, specs, err := c.listQuotas()
	if err != nil {
		return 0, err
	}
	usage, merr := Measure(ctx, c.prom, specs, now, c.opts.QueryTimeout, c.opts.Series, c.opts.Recording)
	c.metrics.queries.Set(float64(usage.Queries))
	c.recordedBudgets(usage)
	if merr != nil {
		c.metrics.promErrors.Inc()
		c.log.Warn("prometheus unavailable: keeping the last decisions, evicting nothing", "err", merr)
	}
	if merr == nil {
		c.measureRoom(ctx, byNS, &usage, now)
		c.metrics.queries.Set(float64(usage.Queries))
	}
	sizes, err := c.deviceSizes()
	if err != nil {
		return usage.Queries, err
	}
	err = c.applyAll(ctx, byNS, usage, sizes, merr == nil, now)
	c.finishCycle(byNS)
	return usage.Queries, err
}

// recordedBudgets says, per budget, whether the cycle read it from the
// recording rules' series (the metric, every cycle), and why not (a
// warning when that changes: a week's window stays uncovered for a week).
func (c *Controller) recordedBudgets(u Usage) {
	if len(u.Recorded) == 0 {
		return // recording off, or an outage: the last known stands
	}
	c.metrics.recorded.Reset()
	for k, ok := range u.Recorded {
		v := 0.0
		if ok {
			v = 1
		}
		c.metrics.recorded.WithLabelValues(k).Set(v)
		if was, seen := c.recorded[k]; !ok && (!seen || was) {
			c.log.Warn("budget read from the agents' own series: the recording rules do not cover its window", "budget", k, "why", u.RecordingGaps[k])
		}
	}
	c.recorded = u.Recorded
}

// measureRoom reads, for the namespaces with admission Kueue whose budget
// is spent, when room returns if nothing more is used (usage.Room). An estimate only: a
// failed query leaves it out and decides nothing.
func (c *Controller) measureRoom(ctx context.Context, byNS map[string][]gpuQuota, usage *Usage, now time.Time) {
	budgets, spent := map[string]Budget{}, map[string]map[string]bool{}
	for ns, qs := range byNS {
		q := ruling(qs)[0]
		// Only the Kueue check says when room returns: the estimate costs
		// RoomSteps-1 queries over the window's history.
		if q.err != nil || q.obj.Spec.Budget == nil || q.obj.Spec.Admission != AdmissionKueue {
			continue
		}
		b := *q.obj.Spec.Budget
		key := BudgetKey(b)
		if used, ok := usage.GPUHours[key][ns]; ok && used >= b.GPUHours {
			budgets[key] = b
			if spent[key] == nil {
				spent[key] = map[string]bool{}
			}
			spent[key][ns] = true
		}
	}
	if len(spent) == 0 {
		return
	}
	room, n, err := MeasureRoom(ctx, c.prom, budgets, spent, now, c.opts.QueryTimeout, c.opts.Series, c.opts.Recording, usage.Recorded)
	usage.Queries += n
	if err != nil {
		c.log.Warn("when spent budgets have room again is unknown this cycle", "err", err)
		return
	}
	usage.Room = room
}

// listQuotas reads every GPUQuota, by namespace, and the valid specs to
// measure.
func (c *Controller) listQuotas() (map[string][]gpuQuota, []Spec, error) {
	objs, err := c.gpuq.List(labels.Everything())
	if err != nil {
		return nil, nil, fmt.Errorf("list GPUQuotas: %w", err)
	}
	byNS := map[string][]gpuQuota{}
	var specs []Spec
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		q := parseQuota(u)
		if q.err == nil {
			specs = append(specs, q.obj.Spec)
		}
		byNS[u.GetNamespace()] = append(byNS[u.GetNamespace()], q)
	}
	return byNS, specs, nil
}

// applyAll evaluates every namespace, a few at a time (namespaces are
// independent; their API writes are bounded). One GPUQuota per namespace:
// the first by name rules; others are reported as conflicting.
func (c *Controller) applyAll(ctx context.Context, byNS map[string][]gpuQuota, usage Usage, sizes DeviceSizes, measured bool, now time.Time) error {
	namespaces := make([]string, 0, len(byNS))
	for ns := range byNS {
		namespaces = append(namespaces, ns)
	}
	sort.Strings(namespaces)
	results := make([]error, len(namespaces))
	var wg sync.WaitGroup
	sem := make(chan struct{}, applyWorkers)
	for i, ns := range namespaces {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			qs := ruling(byNS[ns])
			var errs []error
			for _, extra := range qs[1:] {
				errs = append(errs, c.writeStatus(ctx, extra, nil, Decision{}, now, fmt.Errorf("namespace %s already has GPUQuota %s", ns, qs[0].obj.Name)))
			}
			if q := qs[0]; q.err != nil {
				c.recordBudget(q, Decision{}, measured, q.err, 0)
				errs = append(errs, c.writeStatus(ctx, q, nil, Decision{}, now, q.err))
			} else {
				errs = append(errs, c.evaluateNamespace(ctx, q, usage, sizes, measured, now))
			}
			results[i] = errors.Join(errs...)
		}()
	}
	wg.Wait()
	return errors.Join(results...)
}

// ruling sorts a namespace's GPUQuotas so that the one that rules comes
// first: the first by name.
func ruling(qs []gpuQuota) []gpuQuota {
	sort.Slice(qs, func(i, j int) bool { return qs[i].obj.Name < qs[j].obj.Name })
	return qs
}

// finishCycle publishes the cycle's report and forgets quotas and
// namespaces that are gone, so deleted ones do not pin memory.
func (c *Controller) finishCycle(byNS map[string][]gpuQuota) {
	seen := map[types.UID]bool{}
	for _, qs := range byNS {
		for _, q := range qs {
			seen[q.obj.UID] = true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.report, c.next = c.next, map[string]nsReport{}
	c.completed = time.Now()
	unknown := 0.0
	for _, r := range c.report {
		unknown += r.unknown
	}
	c.metrics.unknown.Set(unknown)
	for uid := range c.written {
		if !seen[uid] {
			delete(c.written, uid)
		}
	}
	for ns := range c.last {
		if _, ok := byNS[ns]; !ok {
			delete(c.last, ns)
		}
	}
	for ns := range c.budgets {
		if _, ok := byNS[ns]; !ok {
			delete(c.budgets, ns)
		}
	}
}

// MetricNames lists every metric the controller exports.
var MetricNames = []string{
	"gpuslice_quota_evaluations_total", "gpuslice_quota_prometheus_errors_total", "gpuslice_quota_evictions_total",
	"gpuslice_quota_idle_annotations_total", "gpuslice_quota_resourcequota_updates_total",
	"gpuslice_quota_evaluation_duration_seconds", "gpuslice_quota_prometheus_queries", "gpuslice_quota_budget_recorded",
	"gpuslice_quota_used_slices", "gpuslice_quota_slice_limit", "gpuslice_quota_used_gpu_hours",
	"gpuslice_quota_budget_gpu_hours", "gpuslice_quota_budget_exhausted", "gpuslice_quota_idle_pods",
	"gpuslice_quota_idleness_unknown_pods", "gpuslice_quota_used_claim_slices", "gpuslice_quota_claim_device_limit",
	"gpuslice_quota_admin_access_claims",
}

// Healthy reports whether, while Run runs, a cycle completed within the
// last StallCycles intervals (or Run started within them): a controller
// wedged on a call that never returns fails its liveness probe and is
// restarted. A standby replica, not running, is healthy.
func (c *Controller) Healthy(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started.IsZero() {
		return true
	}
	last := c.completed
	if last.IsZero() {
		last = c.started
	}
	return now.Sub(last) <= StallCycles*c.opts.Interval
}
