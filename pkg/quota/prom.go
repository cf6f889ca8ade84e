package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// Usage is what one cycle's queries measured. Only valid numbers are in
// it: a namespace or pod whose samples were missing, not finite, out of
// range, or came with warnings is absent, never zero.
type Usage struct {
	// GPUHours by budget key (see BudgetKey) and namespace. A namespace
	// with no series is absent and used nothing.
	GPUHours map[string]map[string]float64
	// InvalidHours lists, by budget key, the namespaces whose GPU-hours
	// came out NaN, infinite or negative: unknown, not zero.
	InvalidHours map[string]map[string]bool
	// Idle by idle window.
	Idle map[time.Duration]IdleEvidence
	// Queries is how many PromQL queries the cycle made.
	Queries int
	// Recorded says, by budget key, whether the budget was read from the
	// recording rules' series (true) or the agents' own, the rules not
	// covering its window (false, RecordingGaps says why); empty with
	// recording off.
	Recorded      map[string]bool
	RecordingGaps map[string]string
	// Room is, for spent budgets, the use their windows will still hold at
	// each step from now (MeasureRoom); nil when none is spent or it could
	// not be read.
	Room map[string]map[string][]float64
}

// IdleEvidence is what Prometheus holds about pods' use over one idle
// window.
type IdleEvidence struct {
	// Pods by "namespace/pod".
	Pods map[string]PodEvidence
	// Blind are the agents (by instance) that were down, or could not read
	// a GPU, at some point in the window: what they report is incomplete.
	Blind map[string]bool
	// Unknown are the pods (by "namespace/pod") whose use an agent marked
	// unknown at some point in the window: a process of theirs could not be
	// placed in one of their containers, so their series are incomplete.
	Unknown map[string]bool
}

// PodEvidence is one pod's SM utilization samples over an idle window.
type PodEvidence struct {
	// Max is the highest sample.
	Max float64
	// Samples is the fewest samples any of the pod's series has in the
	// window: a series that started late or has gaps has fewer.
	Samples int
	// Valid is false when some sample was not a finite number in [0, 1].
	Valid bool
	// Instances are the agents that reported the pod.
	Instances []string
}

// BudgetKey names a budget's query: its source and window.
func BudgetKey(b Budget) string {
	src := b.Source
	if src == "" {
		src = SourceBusy
	}
	return src + "/" + b.Window.String()
}

// Querier runs instant PromQL queries.
type Querier interface {
	Query(ctx context.Context, query string, ts time.Time, opts ...promv1.Option) (model.Value, promv1.Warnings, error)
}

// NewQuerier returns a Querier over the Prometheus at address.
//
// Every request asks not to be answered partially (partial_response=false,
// Thanos' query API; Prometheus and Mimir ignore it): a store Thanos
// cannot reach then fails the query, as it should, instead of yielding a
// smaller sum with a warning.
func NewQuerier(address string) (Querier, error) {
	c, err := api.NewClient(api.Config{Address: address, RoundTripper: noPartial{api.DefaultRoundTripper}})
	if err != nil {
		return nil, fmt.Errorf("prometheus client: %w", err)
	}
	return promv1.NewAPI(c), nil
}

// noPartial adds partial_response=false to every request's query string
// (which query APIs read with a POST's form alike).
type noPartial struct{ next http.RoundTripper }

func (n noPartial) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	q := r.URL.Query()
	q.Set("partial_response", "false")
	r.URL.RawQuery = q.Encode()
	return n.next.RoundTrip(r)
}

// promRange writes a duration as PromQL does ("90s").
func promRange(d time.Duration) string { return model.Duration(d).String() }

// Series is the label matchers (PromQL, without braces) that only the
// agents' own scrape gives a series: the controller believes a gpuslice_*
// series, and an agent's up, only when they match. A tenant's scrape target
// exporting gpuslice_* names (a ServiceMonitor with honorLabels) must not
// be able to charge another namespace, keep its idle pod looking busy or
// make an agent look blind; the label these matchers name must be one such
// a target cannot set (docs/quota.md says what the Prometheus
// administrator enforces). Empty believes every series.
type Series string

// TrustLabel is the label the chart's ServiceMonitor gives every series of
// the agents' scrape: the namespace of the scrape's ServiceMonitor, the
// release's. prometheus-operator's enforcedNamespaceLabel set to it gives
// a tenant's series their own monitor's namespace there, whatever they
// export.
const TrustLabel = "gpuslice_scrape_namespace"

// DefaultSeries is the agents' scrape as the README installs the chart.
const DefaultSeries Series = TrustLabel + `="gpuslice-system"`

// seriesMatchers accepts a comma-separated list of PromQL label matchers.
var seriesMatchers = regexp.MustCompile(`^\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*(?:,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*)*$`)

// Validate checks that s is label matchers.
func (s Series) Validate() error {
	if s != "" && !seriesMatchers.MatchString(string(s)) {
		return fmt.Errorf("series selector %q: want PromQL label matchers such as %s", string(s), DefaultSeries)
	}
	return nil
}

// of is the vector selector of metric among the believed series, with
// more matchers.
func (s Series) of(metric string, more ...string) string {
	ms := more
	if s != "" {
		ms = append([]string{string(s)}, more...)
	}
	if len(ms) == 0 {
		return metric
	}
	return metric + "{" + strings.Join(ms, ",") + "}"
}

// BudgetQuery is the PromQL for a budget's GPU-hours by namespace, from
// the series s believes, in groups by the share of its GPU each device
// stands for (the agents' gpu_fraction label on a MIG instance's
// containers; none on a whole GPU): the controller weights each group by
// it (GPUHoursByNamespace), so a 1g.10gb is charged an eighth of what a
// whole GPU is.
func BudgetQuery(b Budget, s Series) string {
	w := promRange(b.Window.Duration)
	by := "by (namespace, " + contract.LabelGPUFraction + ")"
	if b.Source == SourceAllocated {
		// The share of GPUs held (compute limit ratio), sampled every
		// 15 s over the window, in hours.
		return fmt.Sprintf(`sum %s (sum_over_time(%s[%s:15s])) * 15 / 3600`, by, s.of(contract.MetricContainerComputeLimit), w)
	}
	// Busy time measured, plus, for the containers whose compute the
	// agent cannot measure (a MIG instance without GPM), the share they
	// hold over the time it was unmeasured: unknown use is never free.
	busy := fmt.Sprintf(`sum %s (increase(%s[%s])) / 3600`, by, s.of(contract.MetricContainerGPUBusySeconds), w)
	unmeasured := fmt.Sprintf(`sum %s (sum_over_time((%s * (%s == 1))[%s:15s])) * 15 / 3600`,
		by, s.of(contract.MetricContainerComputeLimit), s.of(contract.MetricContainerComputeUnmeasured), w)
	return fmt.Sprintf(`(%s + %s) or %s or %s`, busy, unmeasured, busy, unmeasured)
}

// GPUHoursByNamespace sums a budget query's answer (BudgetQuery,
// RecordedBudgetQuery) into GPU-hours by namespace, each group weighted by
// its gpu_fraction (GPUFractionOf). A namespace any of whose groups is not
// a finite, non-negative number is in bad instead: nothing is decided from
// it.
func GPUHoursByNamespace(v model.Vector) (hours map[string]float64, bad map[string]bool) {
	hours, bad = map[string]float64{}, map[string]bool{}
	for _, s := range v {
		ns := string(s.Metric["namespace"])
		x := float64(s.Value)
		if !finite(x) || x < 0 {
			bad[ns] = true
			continue
		}
		hours[ns] += x * GPUFractionOf(string(s.Metric[contract.LabelGPUFraction]))
	}
	for ns := range bad {
		delete(hours, ns)
	}
	return hours, bad
}

// GPUFractionOf reads a gpu_fraction label: the share of its GPU a MIG
// instance stands for. Absent (a whole GPU), unreadable or outside (0, 1],
// it is 1: a device is never charged less than a whole GPU's rate because
// of a label it did not carry.
func GPUFractionOf(label string) float64 {
	f, err := strconv.ParseFloat(label, 64)
	if err != nil || !(f > 0 && f <= 1) {
		return 1
	}
	return f
}

// IdleQueries are the PromQL for the evidence of idleness over d, each
// by namespace, pod and the agent (instance) reporting it: the highest and
// lowest sample, their sum (NaN when any sample is), and the fewest
// samples of any of the pod's series.
func IdleQueries(d time.Duration, s Series) (maxQ, minQ, sumQ, countQ string) {
	r := promRange(d)
	by := "by (namespace, pod, instance)"
	m := s.of(contract.MetricContainerSMUtilization)
	return fmt.Sprintf("max %s (max_over_time(%s[%s]))", by, m, r),
		fmt.Sprintf("min %s (min_over_time(%s[%s]))", by, m, r),
		fmt.Sprintf("sum %s (sum_over_time(%s[%s]))", by, m, r),
		fmt.Sprintf("min %s (count_over_time(%s[%s]))", by, m, r)
}

// BlindQuery is the PromQL for the agents that were blind or down at some
// point over d: a GPU they could not read, or a failed scrape.
func BlindQuery(d time.Duration, s Series) string {
	r := promRange(d)
	return fmt.Sprintf(`max by (instance) (max_over_time(%s[%s])) > 0 or min by (instance) (min_over_time(%s[%s])) == 0`,
		s.of(contract.MetricAgentGPUBlind), r, s.of("up", `instance=~".+"`), r)
}

// UnknownQuery is the PromQL for the pods whose use an agent marked
// unknown at some point over d (gpuslice_container_use_unknown).
func UnknownQuery(d time.Duration, s Series) string {
	return fmt.Sprintf("max by (namespace, pod) (max_over_time(%s[%s])) > 0", s.of(contract.MetricContainerUseUnknown), promRange(d))
}

// MaxConcurrentQueries bounds the queries one cycle has in flight.
const MaxConcurrentQueries = 4

// Measure runs one query per distinct budget (source, window) and five per
// distinct idle window among specs: a number of queries that does not
// grow with the number of namespaces or pods, up to MaxConcurrentQueries
// at a time. Each query has timeout. A query that fails, times out or
// answers with warnings (a partial response) fails the cycle's
// measurement: nothing is decided from it.
//
// With rec on, a budget whose window the recording rules cover reads
// their namespace-level series (one more query per window, to count the
// rules' evaluations); any other reads the agents' series.
func Measure(ctx context.Context, q Querier, specs []Spec, now time.Time, timeout time.Duration, series Series, rec Recording) (Usage, error) {
	u := Usage{GPUHours: map[string]map[string]float64{}, InvalidHours: map[string]map[string]bool{}, Idle: map[time.Duration]IdleEvidence{}}
	budgets := map[string]Budget{}
	idles := map[time.Duration]bool{}
	for _, s := range specs {
		if s.Budget != nil {
			budgets[BudgetKey(*s.Budget)] = *s.Budget
		}
		if s.Idle != nil && s.Idle.Action != ActionNone {
			idles[s.Idle.For.Duration] = true
		}
	}
	budgetQ, err := rec.budgetQueries(ctx, q, budgets, now, timeout, series, &u)
	if err != nil {
		return u, err
	}
	var promqls []string
	for _, promql := range budgetQ {
		promqls = append(promqls, promql)
	}
	for d := range idles {
		maxQ, minQ, sumQ, countQ := IdleQueries(d, series)
		promqls = append(promqls, maxQ, minQ, sumQ, countQ, BlindQuery(d, series), UnknownQuery(d, series))
	}
	slices.Sort(promqls)
	promqls = slices.Compact(promqls)
	u.Queries += len(promqls)
	results := make([]model.Vector, len(promqls))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(MaxConcurrentQueries)
	for i, promql := range promqls {
		g.Go(func() error {
			v, err := query(gctx, q, promql, now, timeout)
			results[i] = v
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return u, err
	}
	result := func(promql string) model.Vector {
		i, _ := slices.BinarySearch(promqls, promql)
		return results[i]
	}
	for k := range budgets {
		u.GPUHours[k], u.InvalidHours[k] = GPUHoursByNamespace(result(budgetQ[k]))
	}
	for d := range idles {
		u.Idle[d] = idleEvidence(result, d, series)
	}
	return u, nil
}

// idleEvidence reads the answers to one idle window's queries.
func idleEvidence(result func(string) model.Vector, d time.Duration, series Series) IdleEvidence {
	ev := IdleEvidence{Pods: map[string]PodEvidence{}, Blind: map[string]bool{}, Unknown: map[string]bool{}}
	maxQ, minQ, sumQ, countQ := IdleQueries(d, series)
	for _, s := range result(BlindQuery(d, series)) {
		ev.Blind[string(s.Metric["instance"])] = true
	}
	for _, s := range result(UnknownQuery(d, series)) {
		ev.Unknown[string(s.Metric["namespace"])+"/"+string(s.Metric["pod"])] = true
	}
	// Per pod, over the agents reporting it (a pod moves only by being
	// recreated, but a restarted agent may report it under a new instance).
	type reading struct{ max, min, sum, count float64 }
	per := map[string]map[string]*reading{} // pod -> instance -> values
	for i, promql := range []string{maxQ, minQ, sumQ, countQ} {
		for _, s := range result(promql) {
			pod := string(s.Metric["namespace"]) + "/" + string(s.Metric["pod"])
			inst := string(s.Metric["instance"])
			if per[pod] == nil {
				per[pod] = map[string]*reading{}
			}
			v := per[pod][inst]
			if v == nil {
				v = &reading{max: math.NaN(), min: math.NaN(), sum: math.NaN(), count: 0}
				per[pod][inst] = v
			}
			x := float64(s.Value)
			switch i {
			case 0:
				v.max = x
			case 1:
				v.min = x
			case 2:
				v.sum = x
			case 3:
				v.count = x
			}
		}
	}
	for pod, insts := range per {
		pe := PodEvidence{Valid: true, Samples: math.MaxInt}
		for inst, v := range insts {
			pe.Instances = append(pe.Instances, inst)
			if !finite(v.max) || !finite(v.min) || !finite(v.sum) || v.min < 0 || v.max > 1 {
				pe.Valid = false
			}
			pe.Max = max(pe.Max, v.max)
			pe.Samples = min(pe.Samples, int(v.count))
		}
		if !pe.Valid {
			pe.Max = 0 // never reported: an invalid number must not travel
		}
		sort.Strings(pe.Instances)
		ev.Pods[pod] = pe
	}
	return ev
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// ErrPartialResponse reports an answer that came with warnings: a
// Prometheus-compatible store (Thanos, Mimir) that could not reach all of
// its data. Nothing is decided from a partial answer.
var ErrPartialResponse = errors.New("partial response")

func query(ctx context.Context, q Querier, promql string, now time.Time, timeout time.Duration) (model.Vector, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	v, warnings, err := q.Query(ctx, promql, now)
	if err != nil {
		return nil, fmt.Errorf("prometheus query %q: %w", promql, err)
	}
	if len(warnings) > 0 {
		return nil, fmt.Errorf("prometheus query %q: %w: %s", promql, ErrPartialResponse, strings.Join(warnings, "; "))
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("prometheus query %q: got %s, want a vector", promql, v.Type())
	}
	return vec, nil
}
