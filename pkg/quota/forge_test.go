package quota_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// forger is a tenant's scrape target exporting gpuslice_* names with every
// label it likes, as a ServiceMonitor with honorLabels lets it: the
// agents' job and instance, the trust label's value, another namespace's
// pods. Its busy-seconds counter climbs by an hour a second.
type forger struct{ n atomic.Int64 }

func (f *forger) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	busy := f.n.Add(3600)
	forged := `job="gpuslice-agent",instance="node-a",gpuslice_scrape_namespace="gpuslice-system"`
	_, _ = io.WriteString(w, fmt.Sprintf(`# TYPE gpuslice_container_gpu_busy_seconds_total counter
gpuslice_container_gpu_busy_seconds_total{%[1]s,namespace="victim",pod="nothing",container="main",gpu="0",uuid="GPU-a"} %[2]d
# TYPE gpuslice_container_sm_utilization_ratio gauge
gpuslice_container_sm_utilization_ratio{%[1]s,namespace="ml",pod="idle",container="main",gpu="0",uuid="GPU-a"} 0.9
# TYPE gpuslice_agent_gpu_blind gauge
gpuslice_agent_gpu_blind{%[1]s,gpu="0",uuid="GPU-a"} 1
`, forged, busy))
}

// TestForgingTargetIsNotBelieved: the attack from the review, against a
// real Prometheus. A tenant's target exporting gpuslice_* series (labels
// honored) charges the victim namespace GPU-hours for a pod that used
// nothing, makes its own idle pod look busy and marks the real agent
// blind, when every series is believed. The controller believes only the
// agents' series by the trust label, which Prometheus gives tenants'
// series their own namespace in (as prometheus-operator's
// enforcedNamespaceLabel does): none of it lands.
func TestForgingTargetIsNotBelieved(t *testing.T) {
	t.Parallel()
	agent := &fakeAgent{util: map[string]string{"idle": "0"}, unknown: map[string]string{}, blind: "0"}
	a, f := httptest.NewServer(agent), httptest.NewServer(&forger{})
	t.Cleanup(a.Close)
	t.Cleanup(f.Close)
	// The tenant's job honors the target's labels; the administrator's
	// enforcement sets the trust label to the tenant monitor's namespace
	// after the scrape, whatever the target sent.
	tenant := fmt.Sprintf(`  - job_name: tenant
    honor_labels: true
    static_configs: [{targets: [%q], labels: {instance: tenant-pod}}]
    metric_relabel_configs: [{target_label: gpuslice_scrape_namespace, replacement: ml}]
`, strings.TrimPrefix(f.URL, "http://"))
	promURL, _ := promtest.Start(t, promtest.StaticTarget("gpuslice-agent", strings.TrimPrefix(a.URL, "http://"), "node-a")+tenant)
	q, err := quota.NewQuerier(promURL)
	if err != nil {
		t.Fatal(err)
	}
	const window = 6 * time.Second
	specs := []quota.Spec{
		{Budget: &quota.Budget{GPUHours: 1, Window: quota.Duration{Duration: time.Minute}}},
		{Idle: &quota.Idle{BelowUtilization: 0.05, For: quota.Duration{Duration: window}, Action: quota.ActionEvict}},
	}
	key := quota.BudgetKey(*specs[0].Budget)
	time.Sleep(window + 2*time.Second)
	measure := func(s quota.Series) quota.Usage {
		t.Helper()
		u, err := quota.Measure(context.Background(), q, specs, time.Now(), 5*time.Second, s, quota.Recording{})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	// Believing every series, the attack works: the check can fail.
	all := measure("")
	if all.GPUHours[key]["victim"] <= 0 || all.Idle[window].Pods["ml/idle"].Max < 0.5 || !all.Idle[window].Blind["node-a"] {
		t.Fatalf("believing every series the forgery did not land (victim %v GPU-hours, idle pod %+v, blind %v): the test proves nothing",
			all.GPUHours[key]["victim"], all.Idle[window].Pods["ml/idle"], all.Idle[window].Blind)
	}
	t.Logf("believing every series: victim charged %.1f GPU-hours, the idle pod's max %.2f, node-a blind %t",
		all.GPUHours[key]["victim"], all.Idle[window].Pods["ml/idle"].Max, all.Idle[window].Blind["node-a"])
	u := measure(quota.DefaultSeries)
	if h, ok := u.GPUHours[key]["victim"]; ok {
		t.Errorf("the victim namespace is charged %v GPU-hours by a tenant's series", h)
	}
	if e := u.Idle[window].Pods["ml/idle"]; !e.Valid || e.Max != 0 {
		t.Errorf("the idle pod reads %+v; want the agent's valid zeros alone", e)
	}
	if u.Idle[window].Blind["node-a"] {
		t.Error("the real agent is marked blind by a tenant's series")
	}
}
