package quota

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// The series the recording rules (RecordingRules) write: namespace-level
// sums a budget reads instead of every container's series, so a cycle's
// cost grows with namespaces, not containers.
const (
	// RecordedBusy is each namespace's busy seconds per second, over the
	// agents' series (rate over RecordedRateRange).
	RecordedBusy = "namespace:gpuslice_container_gpu_busy_seconds:rate"
	// RecordedUnmeasured is each namespace's share of GPUs held by
	// containers whose compute is unmeasured.
	RecordedUnmeasured = "namespace:gpuslice_container_compute_unmeasured_limit_ratio:sum"
	// RecordedAllocated is each namespace's share of GPUs held.
	RecordedAllocated = "namespace:gpuslice_container_compute_limit_ratio:sum"
	// RecordedUp is 1 at every evaluation of the group: how many
	// evaluations a window holds says whether the recorded series cover it.
	RecordedUp = "gpuslice:quota_recording_rules:up"
	// RecordingGroup names the rule group.
	RecordingGroup = "gpuslice-quota-recording"
)

// Recording says whether a budget reads the recording rules' series: off
// when Interval is zero. The rules must run every Interval with the same
// Series.
type Recording struct {
	Interval time.Duration
}

// RecordedRateRange is the range of the busy rate the rules record every
// interval, Prometheus scraping the agents every scrape: at least four
// scrapes, and at least two evaluations so that every increase is counted
// once when the samples are summed back (each increase falls in
// range/interval evaluations, each weighted interval/range). The recorded
// use lags the agents' by up to this range.
func RecordedRateRange(interval, scrape time.Duration) time.Duration {
	return max(2*interval, 4*scrape)
}

var equalityMatcher = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*("(?:[^"\\]|\\.)*")\s*(?:,|$)`)

// equalities splits s into its label names and quoted values; an error
// when a matcher is not an equality (the rules keep the labels the
// selector names, which needs their values).
func (s Series) equalities() (names, values []string, err error) {
	rest := string(s)
	for strings.TrimSpace(rest) != "" {
		m := equalityMatcher.FindStringSubmatch(rest)
		if m == nil {
			return nil, nil, fmt.Errorf("series selector %q: recording rules need equality matchers (name=\"value\") only", string(s))
		}
		names, values = append(names, m[1]), append(values, m[2])
		rest = rest[len(m[0]):]
	}
	if len(names) == 0 {
		return nil, nil, fmt.Errorf("recording rules need a series selector (such as %s): recorded series must carry the trust label", DefaultSeries)
	}
	return names, values, nil
}

// RecordingRules is the Prometheus rule group (YAML, for a rule file's or a
// PrometheusRule's groups list) a budget reads with Recording{interval},
// the agents scraped every scrape:
// the namespace-level sums of the agents' series matching s, which must
// be equality matchers; the recorded series keep the labels s names, so
// the controller believes them by the same selector (a tenant's series
// cannot pose as them).
func RecordingRules(s Series, interval, scrape time.Duration) (string, error) {
	if interval <= 0 || scrape <= 0 {
		return "", fmt.Errorf("recording interval %s, scrape interval %s: want positive durations", interval, scrape)
	}
	names, values, err := s.equalities()
	if err != nil {
		return "", err
	}
	by := "namespace, " + contract.LabelGPUFraction + ", " + strings.Join(names, ", ")
	up := "vector(1)"
	for i, n := range names {
		up = fmt.Sprintf(`label_replace(%s, %q, %s, "", "")`, up, n, strings.ReplaceAll(values[i], "$", "$$"))
	}
	rules := []struct{ record, expr string }{
		{RecordedBusy, fmt.Sprintf("sum by (%s) (rate(%s[%ds]))", by, s.of(contract.MetricContainerGPUBusySeconds), int64(RecordedRateRange(interval, scrape).Seconds()))},
		{RecordedUnmeasured, fmt.Sprintf("sum by (%s) (%s * (%s == 1))", by, s.of(contract.MetricContainerComputeLimit), s.of(contract.MetricContainerComputeUnmeasured))},
		{RecordedAllocated, fmt.Sprintf("sum by (%s) (%s)", by, s.of(contract.MetricContainerComputeLimit))},
		{RecordedUp, up},
	}
	var b strings.Builder
	fmt.Fprintf(&b, "- name: %s\n  interval: %s\n  rules:\n", RecordingGroup, promRange(interval))
	for _, r := range rules {
		fmt.Fprintf(&b, "  - record: %s\n    expr: %s\n", r.record, yamlString(r.expr))
	}
	return b.String(), nil
}

// yamlString quotes a PromQL expression as a YAML single-quoted scalar.
func yamlString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// RecordedBudgetQuery is BudgetQuery over the recording rules' series:
// their samples summed over the window, each standing for one interval,
// in groups by gpu_fraction as BudgetQuery's.
func RecordedBudgetQuery(b Budget, s Series, interval time.Duration) string {
	w := promRange(b.Window.Duration)
	per := interval.Seconds() / 3600
	sum := func(metric string) string {
		return fmt.Sprintf("sum by (namespace, %s) (sum_over_time(%s[%s])) * %g", contract.LabelGPUFraction, s.of(metric), w, per)
	}
	if b.Source == SourceAllocated {
		return sum(RecordedAllocated)
	}
	busy, unmeasured := sum(RecordedBusy), sum(RecordedUnmeasured)
	return fmt.Sprintf(`(%s + %s) or %s or %s`, busy, unmeasured, busy, unmeasured)
}

// CoverageQuery counts the recording group's evaluations over window.
func CoverageQuery(window time.Duration, s Series) string {
	return fmt.Sprintf("count_over_time(%s[%s])", s.of(RecordedUp), promRange(window))
}

// gap says what the recording rules miss of window: "" when they ran at
// every interval of it (one evaluation of slack at its edges). A window
// they do not cover is read from the agents' own series: a skipped
// evaluation would under-charge, a counter never does.
func (r Recording) gap(ctx context.Context, q Querier, window time.Duration, now time.Time, timeout time.Duration, s Series) (string, error) {
	v, err := query(ctx, q, CoverageQuery(window, s), now, timeout)
	if err != nil {
		return "", err
	}
	got := 0.0
	for _, smp := range v {
		if f := float64(smp.Value); finite(f) {
			got = math.Max(got, f)
		}
	}
	want := math.Floor(window.Seconds()/r.Interval.Seconds()) - 1
	if got >= want {
		return "", nil
	}
	return fmt.Sprintf("the recording rules ran %g times over the last %s, want %g (every %s)", got, model.Duration(window), want+1, model.Duration(r.Interval)), nil
}

// budgetQueries picks each budget's query: the recorded one when the
// rules are on and cover its window, BudgetQuery otherwise; u.Queries
// counts the coverage queries and u.Recorded says which was picked.
func (r Recording) budgetQueries(ctx context.Context, q Querier, budgets map[string]Budget, now time.Time, timeout time.Duration, s Series, u *Usage) (map[string]string, error) {
	out := map[string]string{}
	covered := map[time.Duration]string{} // window -> why not ("" covered)
	for k, b := range budgets {
		out[k] = BudgetQuery(b, s)
		if r.Interval <= 0 {
			continue
		}
		why, seen := covered[b.Window.Duration]
		if !seen {
			var err error
			if why, err = r.gap(ctx, q, b.Window.Duration, now, timeout, s); err != nil {
				return nil, err
			}
			u.Queries++
			covered[b.Window.Duration] = why
		}
		if u.Recorded == nil {
			u.Recorded, u.RecordingGaps = map[string]bool{}, map[string]string{}
		}
		u.Recorded[k] = why == ""
		if why != "" {
			u.RecordingGaps[k] = why
			continue
		}
		out[k] = RecordedBudgetQuery(b, s, r.Interval)
	}
	return out, nil
}
