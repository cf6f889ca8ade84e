package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// startPrometheus runs Debian's Prometheus scraping target every second
// and returns its address. CI installs it (package prometheus) and sets
// GPUSLICE_REQUIRE_PROMTOOL, so there its absence is a failure.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("GPUSLICE_REQUIRE_PROMTOOL") != "" {
			t.Fatal("prometheus is required (GPUSLICE_REQUIRE_PROMTOOL is set) but not on PATH")
		}
		t.Skip("prometheus not installed (apt-get install prometheus)")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: gpuslice
    static_configs: [{targets: [%q], labels: {instance: test-node}}]
`, target)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	return addr
}

// promQuery runs an instant query and returns each result's value keyed
// by the given label.
func promQuery(t *testing.T, addr, query, by string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return nil // not up yet
	}
	defer func() { _ = resp.Body.Close() }()
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		return nil
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		v, err := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
		if err == nil {
			out[s.Metric[by]] = v
		}
	}
	return out
}

// waitQuery polls until the query returns every key in want within tol.
func waitQuery(t *testing.T, addr, query, by string, want map[string]float64, tol float64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got map[string]float64
	for time.Now().Before(deadline) {
		got = promQuery(t, addr, query, by)
		ok := len(got) == len(want)
		for k, v := range want {
			g, present := got[k]
			ok = ok && present && g >= v-tol && g <= v+tol
		}
		if ok {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("Prometheus query %s = %v, want %v ± %.2f", query, got, want, tol)
}
