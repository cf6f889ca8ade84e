package quota

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// Usage is what one cycle's queries measured.
type Usage struct {
	// GPUHours by budget key (see BudgetKey) and namespace.
	GPUHours map[string]map[string]float64
	// MaxUtilization by idle window and "namespace/pod".
	MaxUtilization map[time.Duration]map[string]float64
	// Queries is how many PromQL queries the cycle made.
	Queries int
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
func NewQuerier(address string) (Querier, error) {
	c, err := api.NewClient(api.Config{Address: address})
	if err != nil {
		return nil, fmt.Errorf("prometheus client: %w", err)
	}
	return promv1.NewAPI(c), nil
}

// promRange writes a duration as PromQL does ("90s").
func promRange(d time.Duration) string { return model.Duration(d).String() }

// BudgetQuery is the PromQL for a budget's GPU-hours by namespace.
func BudgetQuery(b Budget) string {
	w := promRange(b.Window.Duration)
	if b.Source == SourceAllocated {
		// The share of GPUs held (compute limit ratio), sampled every
		// 15 s over the window, in hours.
		return fmt.Sprintf(`sum by (namespace) (sum_over_time(gpuslice_container_compute_limit_ratio[%s:15s])) * 15 / 3600`, w)
	}
	return fmt.Sprintf(`sum by (namespace) (increase(gpuslice_container_gpu_busy_seconds_total[%s])) / 3600`, w)
}

// IdleQuery is the PromQL for each pod's highest SM utilization over d.
func IdleQuery(d time.Duration) string {
	return fmt.Sprintf(`max by (namespace, pod) (max_over_time(gpuslice_container_sm_utilization_ratio[%s]))`, promRange(d))
}

// Measure runs one query per distinct budget (source, window) and one per
// distinct idle window among specs: a number of queries that does not grow
// with the number of namespaces or pods.
func Measure(ctx context.Context, q Querier, specs []Spec, now time.Time) (Usage, error) {
	u := Usage{GPUHours: map[string]map[string]float64{}, MaxUtilization: map[time.Duration]map[string]float64{}}
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
	keys := make([]string, 0, len(budgets))
	for k := range budgets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		vec, err := query(ctx, q, BudgetQuery(budgets[k]), now)
		u.Queries++
		if err != nil {
			return u, err
		}
		m := map[string]float64{}
		for _, s := range vec {
			m[string(s.Metric["namespace"])] = float64(s.Value)
		}
		u.GPUHours[k] = m
	}
	for d := range idles {
		vec, err := query(ctx, q, IdleQuery(d), now)
		u.Queries++
		if err != nil {
			return u, err
		}
		m := map[string]float64{}
		for _, s := range vec {
			m[string(s.Metric["namespace"])+"/"+string(s.Metric["pod"])] = float64(s.Value)
		}
		u.MaxUtilization[d] = m
	}
	return u, nil
}

func query(ctx context.Context, q Querier, promql string, now time.Time) (model.Vector, error) {
	v, _, err := q.Query(ctx, promql, now)
	if err != nil {
		return nil, fmt.Errorf("prometheus query %q: %w", promql, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("prometheus query %q: got %s, want a vector", promql, v.Type())
	}
	return vec, nil
}
