package quota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gpuslice/gpuslice/api/v1alpha1"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
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
	written map[types.UID]written
	metrics controllerMetrics
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
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedEventSink{kube: kube})
	c := &Controller{
		kube: kube, dyn: dyn, prom: prom, opts: opts, log: opts.Logger,
		events: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "gpuslice-quota-controller"}),
		pods:   pods.Lister(), quotas: rqs.Lister(), gpuq: gq.Lister(),
		synced:  []cache.InformerSynced{pods.Informer().HasSynced, rqs.Informer().HasSynced, gq.Informer().HasSynced},
		last:    map[string]Decision{},
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

// gpuQuota is a GPUQuota as listed (raw, written back with a new status)
// and read into the API's types (obj); err says why its spec is invalid.
type gpuQuota struct {
	raw *unstructured.Unstructured
	obj *v1alpha1.GPUQuota
	err error
}

// parseQuota reads a listed GPUQuota into the API's types. Its metadata is
// always read; a spec that does not parse or validate is q.err, and a
// status that does not parse is left empty.
func parseQuota(u *unstructured.Unstructured) gpuQuota {
	obj := &v1alpha1.GPUQuota{
		TypeMeta: metav1.TypeMeta{APIVersion: u.GetAPIVersion(), Kind: u.GetKind()},
		ObjectMeta: metav1.ObjectMeta{Name: u.GetName(), Namespace: u.GetNamespace(), UID: u.GetUID(),
			Generation: u.GetGeneration(), ResourceVersion: u.GetResourceVersion()},
	}
	q := gpuQuota{raw: u, obj: obj}
	raw, _ := json.Marshal(u.Object["spec"])
	if q.err = json.Unmarshal(raw, &obj.Spec); q.err == nil {
		q.err = obj.Spec.Validate()
	}
	if st, ok := u.Object["status"]; ok {
		raw, _ := json.Marshal(st)
		if json.Unmarshal(raw, &obj.Status) != nil {
			obj.Status = v1alpha1.GPUQuotaStatus{}
		}
	}
	return q
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
	usage, merr := Measure(ctx, c.prom, specs, now, c.opts.QueryTimeout, c.opts.Series)
	c.metrics.queries.Set(float64(usage.Queries))
	if merr != nil {
		c.metrics.promErrors.Inc()
		c.log.Warn("prometheus unavailable: keeping the last decisions, evicting nothing", "err", merr)
	}
	sizes, err := c.deviceSizes()
	if err != nil {
		return usage.Queries, err
	}
	err = c.applyAll(ctx, byNS, usage, sizes, merr == nil, now)
	c.finishCycle(byNS)
	return usage.Queries, err
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
			qs := byNS[ns]
			sort.Slice(qs, func(i, j int) bool { return qs[i].obj.Name < qs[j].obj.Name })
			var errs []error
			for _, extra := range qs[1:] {
				errs = append(errs, c.writeStatus(ctx, extra, nil, Decision{}, now, fmt.Errorf("namespace %s already has GPUQuota %s", ns, qs[0].obj.Name)))
			}
			if q := qs[0]; q.err != nil {
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
}

func (c *Controller) evaluateNamespace(ctx context.Context, q gpuQuota, usage Usage, sizes DeviceSizes, metricsOK bool, now time.Time) error {
	ns, spec := q.obj.Namespace, q.obj.Spec
	in := Input{Spec: spec, MetricsOK: metricsOK, Now: now, ScrapeInterval: c.opts.ScrapeInterval}
	if rq, err := c.quotas.ResourceQuotas(ns).Get(QuotaName); err == nil {
		used := rq.Status.Used[corev1.ResourceName("requests."+c.opts.Resource)]
		in.UsedSlices = used.Value()
	}
	if spec.Budget != nil {
		key := BudgetKey(*spec.Budget)
		in.UsedGPUHours, in.HoursInvalid = usage.GPUHours[key][ns], usage.InvalidHours[key][ns]
	}
	claimSlices, err := c.claimUse(ns, sizes, &in)
	if err != nil {
		return err
	}
	podSlices, err := c.readPods(ns, usage, claimSlices, &in)
	if err != nil {
		return err
	}
	if in.UsedSlices == 0 {
		in.UsedSlices = podSlices // no ResourceQuota yet: count the pods
	}
	c.mu.Lock()
	if prev, ok := c.last[ns]; ok {
		in.Previous = &prev
	}
	c.mu.Unlock()
	d := Decide(in)
	r := nsReport{usedSlices: float64(in.UsedSlices), claimSlices: -1, usedHours: d.UsedGPUHours, idle: float64(len(d.Idle)), unknown: float64(len(d.Unknown)), exhausted: d.BudgetExhausted}
	if d.Hard != nil {
		v := float64(*d.Hard)
		r.limit = &v
	}
	if spec.Budget != nil {
		v := spec.Budget.GPUHours
		r.budget = &v
	}
	if in.Claims != nil {
		r.claimSlices = float64(in.Claims.Slices)
		r.claimLimits = d.ClaimDevices
		r.adminClaims = float64(in.Claims.AdminAccess)
	}
	c.mu.Lock()
	c.last[ns] = d
	c.next[ns] = r
	c.mu.Unlock()

	var errs []error
	errs = append(errs, c.applyQuota(ctx, q.obj, ns, d))
	for _, name := range d.Annotate {
		errs = append(errs, c.annotate(ctx, ns, name, now))
	}
	for _, name := range d.Evict {
		errs = append(errs, c.evict(ctx, ns, name, spec.Idle))
	}
	errs = append(errs, c.writeStatus(ctx, q, &in, d, now, nil))
	return errors.Join(errs...)
}

// readPods reads the namespace's pods holding slices or claims into
// in.Pods, and returns the nvidia.com/vgpu slices they request.
func (c *Controller) readPods(ns string, usage Usage, claimSlices map[string]int64, in *Input) (int64, error) {
	pods, err := c.pods.Pods(ns).List(labels.Everything())
	if err != nil {
		return 0, err
	}
	var podSlices int64
	for _, p := range pods {
		n := c.slices(p)
		vgpu := n
		for _, name := range podClaims(p) {
			n += claimSlices[name]
		}
		if n == 0 || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil {
			continue
		}
		podSlices += vgpu
		pp := Pod{Name: p.Name, Slices: n, Running: p.Status.Phase == corev1.PodRunning, OptOut: p.Annotations[AnnotationOptOut] == "true", IdleSince: p.Annotations[AnnotationIdleSince]}
		if p.Status.StartTime != nil {
			pp.Started = p.Status.StartTime.Time
		}
		if in.Spec.Idle != nil {
			ev := usage.Idle[in.Spec.Idle.For.Duration]
			pp.UseUnknown = ev.Unknown[ns+"/"+p.Name]
			if e, ok := ev.Pods[ns+"/"+p.Name]; ok {
				pp.Evidence = &e
				for _, inst := range e.Instances {
					pp.AgentBlind = pp.AgentBlind || ev.Blind[inst]
				}
			}
		}
		in.Pods = append(in.Pods, pp)
	}
	return podSlices, nil
}

// slices is what a pod requests of the resource, over its containers.
func (c *Controller) slices(p *corev1.Pod) int64 {
	var n int64
	for _, ctr := range p.Spec.Containers {
		if q, ok := ctr.Resources.Limits[corev1.ResourceName(c.opts.Resource)]; ok {
			n += q.Value()
		} else if q, ok := ctr.Resources.Requests[corev1.ResourceName(c.opts.Resource)]; ok {
			n += q.Value()
		}
	}
	return n
}

// applyQuota makes the namespace's ResourceQuota say d.Hard and
// d.ClaimDevices, for the keys the controller manages; with no limit left
// it deletes the ResourceQuota.
func (c *Controller) applyQuota(ctx context.Context, owner *v1alpha1.GPUQuota, ns string, d Decision) error {
	managed := []corev1.ResourceName{corev1.ResourceName("requests." + c.opts.Resource)}
	for _, class := range c.opts.DeviceClasses {
		managed = append(managed, corev1.ResourceName(DeviceClassQuotaKey(class)))
	}
	for class := range d.ClaimDevices {
		if !slices.Contains(c.opts.DeviceClasses, class) { // an uncapped class seen reaching gpuslice's devices
			managed = append(managed, corev1.ResourceName(DeviceClassQuotaKey(class)))
		}
	}
	want := corev1.ResourceList{}
	if d.Hard != nil {
		want[managed[0]] = *resource.NewQuantity(*d.Hard, resource.DecimalSI)
	}
	for class, n := range d.ClaimDevices {
		want[corev1.ResourceName(DeviceClassQuotaKey(class))] = *resource.NewQuantity(n, resource.DecimalSI)
	}
	rqs := c.kube.CoreV1().ResourceQuotas(ns)
	cur, err := c.quotas.ResourceQuotas(ns).Get(QuotaName)
	switch {
	case apierrors.IsNotFound(err) && len(want) == 0:
		return nil
	case apierrors.IsNotFound(err):
		rq := &corev1.ResourceQuota{
			ObjectMeta: metav1.ObjectMeta{Name: QuotaName, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/managed-by": "gpuslice-quota-controller"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: v1alpha1.GroupVersion.String(), Kind: "GPUQuota", Name: owner.Name, UID: owner.UID}}},
			Spec: corev1.ResourceQuotaSpec{Hard: want},
		}
		if _, err := rqs.Create(ctx, rq, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create ResourceQuota %s/%s: %w", ns, QuotaName, err)
		}
		c.quotaChanged(owner, ns, d)
		return nil
	case err != nil:
		return err
	case len(want) == 0:
		if err := rqs.Delete(ctx, QuotaName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		c.quotaChanged(owner, ns, d)
		return nil
	}
	same := true
	for _, key := range managed {
		have, hok := cur.Spec.Hard[key]
		w, wok := want[key]
		same = same && hok == wok && (!hok || have.Cmp(w) == 0)
	}
	if same {
		return nil
	}
	upd := cur.DeepCopy()
	if upd.Spec.Hard == nil {
		upd.Spec.Hard = corev1.ResourceList{}
	}
	for _, key := range managed {
		delete(upd.Spec.Hard, key)
	}
	for key, q := range want {
		upd.Spec.Hard[key] = q
	}
	if _, err := rqs.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update ResourceQuota %s/%s: %w", ns, QuotaName, err)
	}
	c.quotaChanged(owner, ns, d)
	return nil
}

func (c *Controller) quotaChanged(owner *v1alpha1.GPUQuota, ns string, d Decision) {
	c.metrics.quotaUpdates.Inc()
	limit := "none"
	if d.Hard != nil {
		limit = fmt.Sprint(*d.Hard)
	}
	c.log.Info("GPU quota limit changed", "namespace", ns, "limit", limit, "reason", d.Reason, "claimDevices", d.ClaimDevices, "claimReason", d.ClaimReason)
	msg := fmt.Sprintf("requests.%s limited to %s: %s", c.opts.Resource, limit, d.Reason)
	if len(c.opts.DeviceClasses) > 0 {
		claims := "not limited"
		if d.ClaimDevices != nil {
			classes := make([]string, 0, len(d.ClaimDevices))
			for class, n := range d.ClaimDevices {
				classes = append(classes, fmt.Sprintf("%s devices %d", class, n))
			}
			sort.Strings(classes)
			claims = strings.Join(classes, ", ") + ": " + d.ClaimReason
		}
		msg += "; claims: " + claims
	}
	c.events.Event(owner, corev1.EventTypeNormal, "QuotaLimitChanged", msg)
}

func (c *Controller) annotate(ctx context.Context, ns, name string, now time.Time) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{AnnotationIdleSince: now.UTC().Format(time.RFC3339)}}})
	p, err := c.kube.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("annotate idle pod %s/%s: %w", ns, name, err)
	}
	c.metrics.annotations.Inc()
	c.log.Info("idle pod annotated", "namespace", ns, "pod", name)
	c.events.Event(p, corev1.EventTypeNormal, "GPUIdle", "The pod holds GPU slices it has not used; marked "+AnnotationIdleSince)
	return nil
}

func (c *Controller) evict(ctx context.Context, ns, name string, idle *Idle) error {
	p, err := c.pods.Pods(ns).Get(name)
	if err != nil {
		return nil //nolint:nilerr // gone already
	}
	ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	err = c.kube.CoreV1().Pods(ns).EvictV1(ctx, ev)
	switch {
	case err == nil:
		c.metrics.evictions.Inc()
		c.log.Info("idle pod evicted", "namespace", ns, "pod", name)
		c.events.Eventf(p, corev1.EventTypeWarning, "GPUIdleEvicted", "Evicted: its GPU utilization stayed below %.0f%% for %s", idle.BelowUtilization*100, idle.For)
		return nil
	case apierrors.IsTooManyRequests(err):
		// A PodDisruptionBudget forbids it now; try again next cycle.
		c.events.Eventf(p, corev1.EventTypeWarning, "GPUIdleEvictionBlocked", "Idle, but a PodDisruptionBudget blocks its eviction: %v", err)
		return nil
	case apierrors.IsNotFound(err):
		return nil
	}
	return fmt.Errorf("evict idle pod %s/%s: %w", ns, name, err)
}

// statusFor is the status a cycle writes: for an invalid spec, the reason
// alone; otherwise what was measured and decided, with the conditions.
// Conditions that did not change keep their transition times.
func statusFor(q *v1alpha1.GPUQuota, in *Input, d Decision, now time.Time, invalid error) v1alpha1.GPUQuotaStatus {
	at := metav1.NewTime(now.UTC().Truncate(time.Second))
	cond := func(typ string, on bool, reason, msg string) v1alpha1.Condition {
		status := v1alpha1.ConditionStatus("False")
		if on {
			status = "True"
		}
		// Keep the transition time of a condition that did not change.
		t := at
		for _, o := range q.Status.Conditions {
			if o.Type == typ && o.Status == status && o.LastTransitionTime != nil {
				t = *o.LastTransitionTime
			}
		}
		return v1alpha1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: &t}
	}
	status := v1alpha1.GPUQuotaStatus{LastEvaluationTime: &at}
	if invalid != nil {
		status.Conditions = []v1alpha1.Condition{cond("Invalid", true, "InvalidSpec", invalid.Error())}
	} else {
		status.UsedSlices = &in.UsedSlices
		status.UsedGPUHours = fmt.Sprintf("%.4f", d.UsedGPUHours)
		status.IdlePods = append([]string{}, d.Idle...)
		status.UnknownPods = []string{}
		for i, p := range d.Unknown {
			if i == MaxUnknownInStatus {
				status.UnknownPods = append(status.UnknownPods, fmt.Sprintf("and %d more (gpuslice_quota_idleness_unknown_pods counts them all)", len(d.Unknown)-i))
				break
			}
			status.UnknownPods = append(status.UnknownPods, p)
		}
		status.SliceLimit = d.Hard
		status.Conditions = []v1alpha1.Condition{
			cond(ConditionBudgetExhausted, d.BudgetExhausted, "Budget", d.Reason),
			cond(ConditionMetricsUnavailable, !in.MetricsOK, "Prometheus", "GPU-hours and idleness come from Prometheus; without a complete answer nothing is reclaimed"),
			cond(ConditionIdlenessUnknown, len(d.Unknown) > 0, "Evidence", "pods whose idleness Prometheus cannot show are never reclaimed; see status.unknownPods"),
		}
		if in.Claims != nil {
			used := in.Claims.Slices
			status.UsedClaimSlices = &used
			status.ClaimDeviceLimits = d.ClaimDevices
			msg := d.ClaimReason
			if d.ClaimDevices == nil {
				msg = "nothing limits the namespace's claims"
			}
			status.Conditions = append(status.Conditions, cond(ConditionClaimsLimited, d.ClaimDevices != nil, "Claims", msg))
			uncapped := "every device class reaching gpuslice's devices is capped"
			if len(in.Claims.Uncapped) > 0 {
				uncapped = d.ClaimReason
			}
			status.Conditions = append(status.Conditions, cond(ConditionUncappedDeviceClass, len(in.Claims.Uncapped) > 0, "Claims", uncapped))
		}
	}
	return status
}

// writeStatus records a quota's status, or why it could not be evaluated.
func (c *Controller) writeStatus(ctx context.Context, q gpuQuota, in *Input, d Decision, now time.Time, invalid error) error {
	status := statusFor(q.obj, in, d, now, invalid)
	// What changes what users act on: not the evaluation time, and not
	// GPU-hours creeping up (refreshed with the heartbeat; the limit itself
	// is decided from fresh numbers every cycle).
	material := status
	material.LastEvaluationTime, material.UsedGPUHours = nil, ""
	key, _ := json.Marshal(struct {
		Generation int64
		Status     v1alpha1.GPUQuotaStatus
	}{q.obj.Generation, material})
	sig := strings.ReplaceAll(string(key), status.LastEvaluationTime.UTC().Format(time.RFC3339), "")
	uid := q.obj.UID
	c.mu.Lock()
	w, ok := c.written[uid]
	c.mu.Unlock()
	if ok && w.status == sig && now.Sub(w.at) < heartbeat(uid) {
		return nil
	}
	raw, err := json.Marshal(status)
	if err != nil {
		return err
	}
	var unstructuredStatus map[string]any
	if err := json.Unmarshal(raw, &unstructuredStatus); err != nil {
		return err
	}
	for k, v := range unstructuredStatus {
		if v == nil {
			delete(unstructuredStatus, k) // not listed, rather than null
		}
	}
	upd := q.raw.DeepCopy()
	upd.Object["status"] = unstructuredStatus
	if _, err := c.dyn.Resource(GVR).Namespace(q.obj.Namespace).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			return nil // the cache was behind; next cycle
		}
		return fmt.Errorf("status of GPUQuota %s/%s: %w", q.obj.Namespace, q.obj.Name, err)
	}
	c.mu.Lock()
	c.written[uid] = written{status: sig, at: now}
	c.mu.Unlock()
	return nil
}

// collectors are the controller's own metrics.
func (c *Controller) collectors() []prometheus.Collector {
	m := &c.metrics
	return []prometheus.Collector{m.cycles, m.promErrors, m.evictions, m.annotations, m.quotaUpdates, m.duration, m.queries, m.unknown, &namespaceCollector{c: c}}
}

// namespaceCollector exports each namespace's quota state as of the last
// cycle.
type namespaceCollector struct{ c *Controller }

var (
	descUsedSlices  = prometheus.NewDesc("gpuslice_quota_used_slices", "Slices the namespace's pods hold.", []string{"namespace"}, nil)
	descLimit       = prometheus.NewDesc("gpuslice_quota_slice_limit", "The limit the controller's ResourceQuota sets on the namespace's slices.", []string{"namespace"}, nil)
	descUsedHours   = prometheus.NewDesc("gpuslice_quota_used_gpu_hours", "GPU-hours the namespace used over its budget window.", []string{"namespace"}, nil)
	descBudget      = prometheus.NewDesc("gpuslice_quota_budget_gpu_hours", "The namespace's GPU-hour budget per window.", []string{"namespace"}, nil)
	descExhausted   = prometheus.NewDesc("gpuslice_quota_budget_exhausted", "1 while the namespace's GPU-hour budget is spent and new GPU pods are rejected.", []string{"namespace"}, nil)
	descIdle        = prometheus.NewDesc("gpuslice_quota_idle_pods", "Pods of the namespace found idle by its GPUQuota.", []string{"namespace"}, nil)
	descClaimSlices = prometheus.NewDesc("gpuslice_quota_used_claim_slices", "Slices the namespace's DRA claims hold (a claim not yet allocated counts as a whole GPU per device).", []string{"namespace"}, nil)
	descClaimLimit  = prometheus.NewDesc("gpuslice_quota_claim_device_limit", "The limit the controller's ResourceQuota sets on the namespace's claim devices of a device class.", []string{"namespace", "device_class"}, nil)
	descAdminClaims = prometheus.NewDesc("gpuslice_quota_admin_access_claims", "The namespace's claims holding gpuslice's devices with admin access (monitoring): they hold no share and no cap applies to them.", []string{"namespace"}, nil)
)

func (n *namespaceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUsedSlices, descLimit, descUsedHours, descBudget, descExhausted, descIdle, descClaimSlices, descClaimLimit, descAdminClaims} {
		ch <- d
	}
}

func (n *namespaceCollector) Collect(ch chan<- prometheus.Metric) {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	for ns, r := range n.c.report {
		ch <- prometheus.MustNewConstMetric(descUsedSlices, prometheus.GaugeValue, r.usedSlices, ns)
		ch <- prometheus.MustNewConstMetric(descUsedHours, prometheus.GaugeValue, r.usedHours, ns)
		ch <- prometheus.MustNewConstMetric(descIdle, prometheus.GaugeValue, r.idle, ns)
		if r.limit != nil {
			ch <- prometheus.MustNewConstMetric(descLimit, prometheus.GaugeValue, *r.limit, ns)
		}
		if r.claimSlices >= 0 {
			ch <- prometheus.MustNewConstMetric(descClaimSlices, prometheus.GaugeValue, r.claimSlices, ns)
			ch <- prometheus.MustNewConstMetric(descAdminClaims, prometheus.GaugeValue, r.adminClaims, ns)
		}
		for class, n := range r.claimLimits {
			ch <- prometheus.MustNewConstMetric(descClaimLimit, prometheus.GaugeValue, float64(n), ns, class)
		}
		if r.budget != nil {
			ex := 0.0
			if r.exhausted {
				ex = 1
			}
			ch <- prometheus.MustNewConstMetric(descBudget, prometheus.GaugeValue, *r.budget, ns)
			ch <- prometheus.MustNewConstMetric(descExhausted, prometheus.GaugeValue, ex, ns)
		}
	}
}

// MetricNames lists every metric the controller exports.
var MetricNames = []string{
	"gpuslice_quota_evaluations_total", "gpuslice_quota_prometheus_errors_total", "gpuslice_quota_evictions_total",
	"gpuslice_quota_idle_annotations_total", "gpuslice_quota_resourcequota_updates_total",
	"gpuslice_quota_evaluation_duration_seconds", "gpuslice_quota_prometheus_queries",
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

// deviceSizes reads the driver's published devices once per cycle; none
// without DeviceClasses.
func (c *Controller) deviceSizes() (DeviceSizes, error) {
	if c.rslices == nil {
		return DeviceSizes{}, nil
	}
	rs, err := c.rslices.List(labels.Everything())
	if err != nil {
		return DeviceSizes{}, fmt.Errorf("list ResourceSlices: %w", err)
	}
	return SizesFromSlices(rs), nil
}

// claimUse reads what the namespace's claims of the capped classes count
// for into in.Claims, and returns each claim's slices by name. Without
// DeviceClasses it reads nothing.
func (c *Controller) claimUse(ns string, sizes DeviceSizes, in *Input) (map[string]int64, error) {
	if c.claims == nil {
		return nil, nil
	}
	claims, err := c.claims.ResourceClaims(ns).List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list ResourceClaims of %s: %w", ns, err)
	}
	use := &ClaimUse{Classes: c.opts.DeviceClasses, Devices: map[string]int64{}, PerDevice: sizes.PerDevice, Uncapped: map[string]int64{}}
	bySlices := map[string]int64{}
	for _, cl := range claims {
		cc := CountClaim(cl, Classes{Capped: c.opts.DeviceClasses, Mapped: c.opts.MappedClasses}, sizes)
		if !cc.Ours {
			continue
		}
		if cc.Uncapped != "" {
			// Fail closed: the class is held at what its claims hold
			// (a ResourceQuota limit and a condition), never unlimited.
			c.log.Warn("a claim holds gpuslice devices through a device class the controller does not cap; it is closed at what it holds: add it to --dra-device-classes (or to --dra-extended-resource-classes if it maps the extended resource)",
				"namespace", ns, "claim", cl.Name, "deviceClass", cc.Uncapped)
			held := CountClaim(cl, Classes{Capped: []string{cc.Uncapped}}, sizes)
			use.Uncapped[cc.Uncapped] += max(held.Devices[cc.Uncapped], 1)
		}
		if cc.AdminAccess {
			use.AdminAccess++
		}
		for class, n := range cc.Devices {
			use.Devices[class] += n
		}
		use.Slices += cc.Slices
		bySlices[cl.Name] = cc.Slices
	}
	// A device the API server admitted before this cache saw its claim
	// must not leave room for one more: count from the smaller number.
	if rq, err := c.quotas.ResourceQuotas(ns).Get(QuotaName); err == nil {
		for _, class := range c.opts.DeviceClasses {
			if used, ok := rq.Status.Used[corev1.ResourceName(DeviceClassQuotaKey(class))]; ok && used.Value() < use.Devices[class] {
				use.Devices[class] = used.Value()
			}
		}
	}
	in.Claims = use
	return bySlices, nil
}

// podClaims names the ResourceClaims a pod uses: those it names, and those
// made for it from templates, as its status records them.
func podClaims(p *corev1.Pod) []string {
	var out []string
	for _, rc := range p.Spec.ResourceClaims {
		if rc.ResourceClaimName != nil {
			out = append(out, *rc.ResourceClaimName)
			continue
		}
		for _, st := range p.Status.ResourceClaimStatuses {
			if st.Name == rc.Name && st.ResourceClaimName != nil {
				out = append(out, *st.ResourceClaimName)
			}
		}
	}
	return out
}
