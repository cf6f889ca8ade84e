package quota_test

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// steadyAgent exports three namespaces' containers: ml busy at half a
// GPU; mig holding a 3g.40gb MIG instance (half its GPU) whose compute is
// unmeasured; small busy at 0.8 of a 1g.10gb (an eighth of its GPU).
type steadyAgent struct{ start time.Time }

func (a steadyAgent) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s := time.Since(a.start).Seconds()
	_, _ = fmt.Fprintf(w, `# TYPE gpuslice_container_gpu_busy_seconds_total counter
gpuslice_container_gpu_busy_seconds_total{namespace="ml",pod="a",container="main",gpu="0",uuid="GPU-a"} %g
gpuslice_container_gpu_busy_seconds_total{namespace="small",pod="c",container="main",gpu="1",uuid="MIG-c",gpu_fraction="0.125"} %g
# TYPE gpuslice_container_compute_limit_ratio gauge
gpuslice_container_compute_limit_ratio{namespace="ml",pod="a",container="main",gpu="0",uuid="GPU-a"} 0.5
gpuslice_container_compute_limit_ratio{namespace="mig",pod="b",container="main",gpu="1",uuid="MIG-b",gpu_fraction="0.5"} 1
gpuslice_container_compute_limit_ratio{namespace="small",pod="c",container="main",gpu="1",uuid="MIG-c",gpu_fraction="0.125"} 1
# TYPE gpuslice_container_compute_unmeasured gauge
gpuslice_container_compute_unmeasured{namespace="ml",pod="a",container="main",gpu="0",uuid="GPU-a"} 0
gpuslice_container_compute_unmeasured{namespace="mig",pod="b",container="main",gpu="1",uuid="MIG-b",gpu_fraction="0.5"} 1
gpuslice_container_compute_unmeasured{namespace="small",pod="c",container="main",gpu="1",uuid="MIG-c",gpu_fraction="0.125"} 0
`, 0.5*s, 0.8*s)
}

// TestRecordingRulesMatchTheAgentsSeries runs the recording rules as
// shipped (RecordingRules) in a real Prometheus scraping an agent and a
// tenant's target that exports the recorded names: a budget read from the
// rules' namespace-level series is what the agents' own series give (the
// busy half GPU, the unmeasured MIG instance at its share, MIG instances
// weighted by their share of their GPU), the tenant's
// forged recorded series are not believed, and a window the rules have not
// run through yet is read from the agents' series, saying why.
func TestRecordingRulesMatchTheAgentsSeries(t *testing.T) {
	t.Parallel()
	agent := httptest.NewServer(steadyAgent{start: time.Now()})
	t.Cleanup(agent.Close)
	forger := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `namespace:gpuslice_container_gpu_busy_seconds:rate{namespace="ml",gpuslice_scrape_namespace="gpuslice-system"} 100
gpuslice:quota_recording_rules:up{gpuslice_scrape_namespace="gpuslice-system"} 1
`)
	}))
	t.Cleanup(forger.Close)
	const interval = time.Second
	rules, err := quota.RecordingRules(quota.DefaultSeries, interval, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ruleFile := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(ruleFile, []byte("groups:\n"+rules), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tenant := fmt.Sprintf(`  - job_name: tenant
    honor_labels: true
    static_configs: [{targets: [%q]}]
    metric_relabel_configs: [{target_label: gpuslice_scrape_namespace, replacement: ml}]
`, strings.TrimPrefix(forger.URL, "http://"))
	promURL, _ := promtest.StartConfig(t, fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [%q]\nscrape_configs:\n%s%s",
		ruleFile, promtest.StaticTarget("gpuslice-agent", strings.TrimPrefix(agent.URL, "http://"), "node-a"), tenant))
	q, err := quota.NewQuerier(promURL)
	if err != nil {
		t.Fatal(err)
	}
	busy := quota.Spec{Budget: &quota.Budget{GPUHours: 1, Window: quota.Duration{Duration: 20 * time.Second}}}
	alloc := quota.Spec{Budget: &quota.Budget{GPUHours: 1, Window: quota.Duration{Duration: 20 * time.Second}, Source: quota.SourceAllocated}}
	long := quota.Spec{Budget: &quota.Budget{GPUHours: 1, Window: quota.Duration{Duration: time.Hour}}}
	measure := func(rec quota.Recording) quota.Usage {
		t.Helper()
		u, err := quota.Measure(context.Background(), q, []quota.Spec{busy, alloc, long}, time.Now(), 5*time.Second, quota.DefaultSeries, rec)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	time.Sleep(27 * time.Second) // the rules cover the 20 s window, past their rate range
	rec, raw := measure(quota.Recording{Interval: interval}), measure(quota.Recording{})
	kb, ka, kl := quota.BudgetKey(*busy.Budget), quota.BudgetKey(*alloc.Budget), quota.BudgetKey(*long.Budget)
	if !rec.Recorded[kb] || !rec.Recorded[ka] {
		t.Fatalf("the 20s budgets were not read from the rules: %v %v", rec.Recorded, rec.RecordingGaps)
	}
	if rec.Recorded[kl] || !strings.Contains(rec.RecordingGaps[kl], "recording rules ran") {
		t.Errorf("the 1h budget, which the rules have not run through, is recorded %t (%q); want the agents' series and why", rec.Recorded[kl], rec.RecordingGaps[kl])
	}
	for _, c := range []struct {
		key, ns string
		want    float64 // GPU-hours over 20 s
	}{
		{kb, "ml", 0.5 * 20 / 3600}, {kb, "mig", 0.5 * 20 / 3600}, {kb, "small", 0.8 * 0.125 * 20 / 3600},
		{ka, "ml", 0.5 * 20 / 3600}, {ka, "mig", 0.5 * 20 / 3600}, {ka, "small", 0.125 * 20 / 3600},
	} {
		got, base := rec.GPUHours[c.key][c.ns], raw.GPUHours[c.key][c.ns]
		t.Logf("%s %s: recorded %.6f, the agents' series %.6f, expected %.6f GPU-hours", c.key, c.ns, got, base, c.want)
		if math.Abs(got-c.want) > 0.15*c.want {
			t.Errorf("%s %s: recorded %.6f GPU-hours, want %.6f ±15%% (the agents' series give %.6f)", c.key, c.ns, got, c.want, base)
		}
	}
	if rec.GPUHours[kl]["ml"] != raw.GPUHours[kl]["ml"] && math.Abs(rec.GPUHours[kl]["ml"]-raw.GPUHours[kl]["ml"]) > 1e-3 {
		t.Errorf("the 1h budget: %v with recording on, %v off; want the agents' series both times", rec.GPUHours[kl]["ml"], raw.GPUHours[kl]["ml"])
	}
}

// TestRecordingRulesNeedEqualityMatchers: the rules keep the labels the
// selector names, so it must say their values.
func TestRecordingRulesNeedEqualityMatchers(t *testing.T) {
	for s, ok := range map[quota.Series]bool{
		quota.DefaultSeries: true, `job="gpuslice-agent", gpuslice_scrape_namespace="x"`: true,
		`gpuslice_scrape_namespace=~"gpu.*"`: false, "": false, `job!="x"`: false,
	} {
		rules, err := quota.RecordingRules(s, time.Minute, 30*time.Second)
		if (err == nil) != ok {
			t.Errorf("%q: err %v", s, err)
		}
		if ok && !strings.Contains(rules, "sum by (namespace, ") {
			t.Errorf("%q: rules\n%s", s, rules)
		}
	}
	if _, err := quota.RecordingRules(quota.DefaultSeries, 0, time.Second); err == nil {
		t.Error("a zero interval is accepted")
	}
}
