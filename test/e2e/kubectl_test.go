package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/e2e/cluster"
)

// startPrometheus runs Debian's Prometheus scraping the agent every
// second, its instance label set to the node's name as the chart's
// ServiceMonitor does.
func startPrometheus(t *testing.T) string {
	t.Helper()
	u, _ := startPrometheusStoppable(t)
	return u
}

// startPrometheusStoppable is startPrometheus with a function stopping it
// early.
func startPrometheusStoppable(t *testing.T) (string, func()) {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("GPUSLICE_REQUIRE_E2E") != "" {
			t.Fatal("prometheus not installed (Debian package prometheus)")
		}
		t.Skip("prometheus not installed (Debian package prometheus)")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: gpuslice-agent
    static_configs: [{targets: [%q]}]
    relabel_configs:
      - {target_label: instance, replacement: %q}
`, c.MetricsAddr, cluster.NodeName)), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := apiserver.StartProcess("prometheus", bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prometheus log:\n%s", p.Logs.Tail(3000))
		}
		p.Stop()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/-/ready") //nolint:noctx // a test's loopback poll
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return "http://" + addr, p.Stop
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready: %v\n%s", err, p.Logs.Tail(3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestKubectlGpusliceTopPods runs the kubectl plugin through the real
// kubectl against a real Prometheus scraping the agent.
func TestKubectlGpusliceTopPods(t *testing.T) {
	prom := startPrometheus(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "top")
	for _, p := range []struct {
		name   string
		slices int64
	}{{"trainer", 2}, {"notebook", 1}} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod(p.name, p.slices, "exec /bin/workload --demand 0.2 --memory-mib 512")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitRunning(t, ns, "trainer")
	waitRunning(t, ns, "notebook")

	kubectl := filepath.Join(apiserverBinDir(), "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Skipf("kubectl not built: %v", err)
	}
	run := func(args ...string) (string, error) {
		cmd := exec.Command(kubectl, args...)
		// kubectl finds plugins on PATH, and takes no flags before a
		// plugin's name.
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(pluginBin)+":"+os.Getenv("PATH"), "KUBECONFIG="+c.API.Kubeconfig, "GPUSLICE_PROMETHEUS_URL="+prom)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(60 * time.Second)
	var out string
	for {
		var err error
		out, err = run("gpuslice", "top", "pods", "-n", ns)
		if err == nil && strings.Contains(out, "trainer") && strings.Contains(out, "notebook") && strings.Contains(out, "0.5Gi/") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl gpuslice top pods never showed both pods with their memory: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	t.Logf("kubectl gpuslice top pods -n %s:\n%s", ns, out)
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		switch f[1] {
		case "trainer":
			if f[5] != "2" {
				t.Errorf("trainer shows %s slices, holds 2: %q", f[5], line)
			}
		case "notebook":
			if f[5] != "1" {
				t.Errorf("notebook shows %s slices, holds 1: %q", f[5], line)
			}
		}
	}
	desc, err := run("gpuslice", "describe", "node", cluster.NodeName)
	if err != nil || !strings.Contains(desc, "trainer") || !strings.Contains(desc, "Held by:") {
		t.Errorf("kubectl gpuslice describe node: %v\n%s", err, desc)
	}
	t.Logf("kubectl gpuslice describe node:\n%s", desc)
	if out, err := run("gpuslice", "top", "gpus"); err != nil || !strings.Contains(out, "A100") {
		t.Errorf("kubectl gpuslice top gpus: %v\n%s", err, out)
	}
}
