// Package promtest runs Debian's Prometheus for tests and reads an
// exposition endpoint, for the agent's, the e2e tier's and the quota
// controller's tests.
package promtest

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpuslice/gpuslice/test/apiserver"
)

// Start runs Prometheus scraping every second with the given
// scrape_configs (a YAML list) and returns its base URL and a function
// that stops it early. Without the prometheus binary it skips, unless
// GPUSLICE_REQUIRE_PROMTOOL is set (as in CI), when it fails.
func Start(tb testing.TB, scrapeConfigs string) (string, func()) {
	tb.Helper()
	port, err := apiserver.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	return StartAt(tb, fmt.Sprintf("127.0.0.1:%d", port), scrapeConfigs)
}

// StartAt is Start on a given address, with empty storage: started at the
// address of one that was stopped, it is that Prometheus restarted without
// its history.
func StartAt(tb testing.TB, addr, scrapeConfigs string) (string, func()) {
	tb.Helper()
	return StartConfig(tb, addr, "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n"+scrapeConfigs)
}

// StartConfig runs Prometheus on addr with a whole configuration file's
// content, as a generator (prometheus-operator's) wrote it.
func StartConfig(tb testing.TB, addr, conf string) (string, func()) {
	tb.Helper()
	return startConfig(tb, addr, conf, filepath.Join(tb.TempDir(), "data"))
}

// StartBackfilled runs Prometheus (scraping nothing) over history written
// in OpenMetrics text, turned into TSDB blocks with promtool tsdb
// create-blocks-from openmetrics as an operator would backfill: windows of
// hours or days exist at once, without waiting for them.
func StartBackfilled(tb testing.TB, openMetrics []byte) string {
	tb.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("GPUSLICE_REQUIRE_PROMTOOL") != "" {
			tb.Fatal("promtool is required (GPUSLICE_REQUIRE_PROMTOOL is set) but not on PATH")
		}
		tb.Skip("promtool not installed (apt-get install prometheus)")
	}
	dir := tb.TempDir()
	src := filepath.Join(dir, "history.om")
	if err := os.WriteFile(src, openMetrics, 0o600); err != nil {
		tb.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if out, err := exec.Command(promtool, "tsdb", "create-blocks-from", "openmetrics", src, data).CombinedOutput(); err != nil {
		tb.Fatalf("promtool backfill: %v\n%s", err, out)
	}
	port, err := apiserver.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	url, _ := startConfig(tb, fmt.Sprintf("127.0.0.1:%d", port), "global: {scrape_interval: 15s}\n", data)
	return url
}

// StartData runs Prometheus (scraping nothing) over an existing TSDB
// directory, its blocks kept as written (no compaction), and returns its
// URL and a function that stops it. Its query limits are raised (10
// minutes, 10^9 samples) so that a benchmark measures what its defaults
// would refuse; its query statistics say what they would have.
func StartData(tb testing.TB, data string) (string, func()) {
	tb.Helper()
	port, err := apiserver.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	return startConfig(tb, fmt.Sprintf("127.0.0.1:%d", port), "global: {scrape_interval: 15s}\n", data,
		"--storage.tsdb.min-block-duration=2h", "--storage.tsdb.max-block-duration=2h", "--storage.tsdb.retention.time=30d",
		"--query.timeout=10m", "--query.max-samples=1000000000")
}

func startConfig(tb testing.TB, addr, conf, data string, extra ...string) (string, func()) {
	tb.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("GPUSLICE_REQUIRE_PROMTOOL") != "" {
			tb.Fatal("prometheus is required (GPUSLICE_REQUIRE_PROMTOOL is set) but not on PATH")
		}
		tb.Skip("prometheus not installed (apt-get install prometheus)")
	}
	dir := tb.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	p, err := apiserver.StartProcess("prometheus", bin, append([]string{"--config.file=" + cfg, "--storage.tsdb.path=" + data,
		"--web.listen-address=" + addr, "--log.level=warn"}, extra...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("prometheus log:\n%s", p.Logs.Tail(3000))
		}
		p.Stop()
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/-/ready") //nolint:noctx // a test's loopback poll
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return "http://" + addr, p.Stop
			}
		}
		if time.Now().After(deadline) || p.Exited() {
			tb.Fatalf("prometheus not ready: %v\n%s", err, p.Logs.Tail(3000))
		}
	}
}

// StaticTarget is a scrape config for one target, its instance label set
// to instance and the quota controller's trust label to the README's
// release namespace, as the chart's ServiceMonitor labels the agents'
// scrape (quota.DefaultSeries).
func StaticTarget(job, target, instance string) string {
	return fmt.Sprintf("  - job_name: %s\n    static_configs: [{targets: [%q], labels: {instance: %q, gpuslice_scrape_namespace: gpuslice-system}}]\n", job, target, instance)
}

// Scrape reads and parses an exposition endpoint.
func Scrape(tb testing.TB, url string) map[string]*dto.MetricFamily {
	tb.Helper()
	mfs, err := Fetch(url)
	if err != nil {
		tb.Fatal(err)
	}
	return mfs
}

// Fetch reads and parses an exposition endpoint, for programs that are
// not tests (the demo, gpu-check).
func Fetch(url string) (map[string]*dto.MetricFamily, error) {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url) //nolint:noctx // a test tier's own endpoint
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// Value returns the counter or gauge sample of family name whose labels
// include want.
func Value(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}
