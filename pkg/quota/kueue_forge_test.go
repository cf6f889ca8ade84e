package quota_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/gpuslice/gpuslice/pkg/kueuecheck"
	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// burst is one container's busy time as a scrape target exported it: busy
// at util from the start of the history until busyFor, idle after;
// scrapeNS is the trust label's value Prometheus gave the series.
type burst struct {
	ns, pod, scrapeNS string
	util              float64
	busyFor           time.Duration
}

// bursts is the OpenMetrics text of the busy-seconds counters of bs over
// [from, to), one sample every step.
func bursts(bs []burst, from, to time.Time, step time.Duration) []byte {
	var b strings.Builder
	b.WriteString("# TYPE gpuslice_container_gpu_busy_seconds counter\n")
	for _, p := range bs {
		labels := fmt.Sprintf(`{namespace=%q,pod=%q,container="main",gpu="0",uuid="GPU-a",instance="node-a",gpuslice_scrape_namespace=%q}`, p.ns, p.pod, p.scrapeNS)
		for t := from; t.Before(to); t = t.Add(step) {
			busy := min(t.Sub(from), p.busyFor).Seconds() * p.util
			fmt.Fprintf(&b, "gpuslice_container_gpu_busy_seconds_total%s %g %d\n", labels, busy, t.Unix())
		}
	}
	b.WriteString("# EOF\n")
	return []byte(b.String())
}

// TestKueueCheckOnForgedAndRealHistory is the forged-series attack's
// Kueue-mode counterpart, on a real Prometheus holding two hours of
// backfilled history, through the controller's cycle and the check's
// Judge. A tenant's series (the trust label says its own namespace)
// charge the victim namespace 5 GPU-hours: its Workloads are still
// admitted, on the agents' series alone. A namespace that really spent
// its 0.5 GPU-hours (1.17, in the first 70 minutes of its window) is
// held, and the check says when room returns: at 3/8 of the window, in 45
// minutes, its use falls to 0.42 (at 2/8 it still holds 0.67). Believing every series, the victim is held:
// the check can fail.
func TestKueueCheckOnForgedAndRealHistory(t *testing.T) {
	t.Parallel()
	now := time.Now().Truncate(time.Second)
	from := now.Add(-2 * time.Hour)
	promURL := promtest.StartBackfilled(t, bursts([]burst{
		{"spent", "train", "gpuslice-system", 1, 70 * time.Minute},
		{"victim", "ok", "gpuslice-system", 0.01, 2 * time.Hour},
		{"victim", "nothing", "tenant", 1, 2 * time.Hour},
		{"victim", "nothing2", "tenant", 1.5, 2 * time.Hour},
	}, from, now.Add(time.Second), 15*time.Second))
	q, err := quota.NewQuerier(promURL)
	if err != nil {
		t.Fatal(err)
	}
	judge := func(series quota.Series) map[string]kueuecheck.Verdict {
		t.Helper()
		spec := map[string]any{"admission": "Kueue", "budget": map[string]any{"gpuHours": 0.5, "window": "2h"}}
		dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{quota.GVR: "GPUQuotaList"},
			gpuQuotaObject("spent", spec), gpuQuotaObject("victim", spec))
		ctrl := quota.New(kubefake.NewClientset(), dyn, q, quota.Options{Interval: time.Hour, ScrapeInterval: 15 * time.Second,
			QueryTimeout: 10 * time.Second, KueueCheck: true, Series: series})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- ctrl.Run(ctx) }()
		defer func() { cancel(); <-done }()
		deadline := time.Now().Add(30 * time.Second)
		for ctrl.BudgetOf("spent").Status != quota.StatusEvaluated || ctrl.BudgetOf("victim").Status != quota.StatusEvaluated {
			if time.Now().After(deadline) {
				t.Fatalf("no cycle judged both namespaces in 30s: %+v, %+v", ctrl.BudgetOf("spent"), ctrl.BudgetOf("victim"))
			}
			time.Sleep(50 * time.Millisecond)
		}
		out := map[string]kueuecheck.Verdict{}
		for _, ns := range []string{"spent", "victim"} {
			out[ns] = kueuecheck.Judge(ctrl.BudgetOf(ns), kueuecheck.Cost{})
			t.Logf("series %s: %s: %s: %s", series, ns, out[ns].State, out[ns].Message)
		}
		return out
	}
	// Believing every series, the forgery holds the victim: the check can
	// fail.
	if v := judge(`gpuslice_scrape_namespace=~".+"`)["victim"]; v.State != kueuecheck.StatePending {
		t.Fatalf("believing every series the victim is %s (%s): the test proves nothing", v.State, v.Message)
	}
	got := judge(quota.DefaultSeries)
	if v := got["victim"]; v.State != kueuecheck.StateReady {
		t.Errorf("a tenant's series hold the victim's Workloads: %s (%s)", v.State, v.Message)
	}
	if v := got["spent"]; v.State != kueuecheck.StatePending || !strings.Contains(v.Message, "room returns within about 45m0s") {
		t.Errorf("the spent namespace: %s (%s); want pending, room within about 45m0s", v.State, v.Message)
	}
}
