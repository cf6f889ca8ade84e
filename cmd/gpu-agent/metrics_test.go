package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// unifiedRoot is the cgroup v2 hierarchy tests may create cgroups in.
const unifiedRoot = "/sys/fs/cgroup/unified"

// containerCgroup creates a cgroup v2 shaped like a burstable pod's
// container (…/kubepods/burstable/pod<uid>/<container id>) under a cgroup
// of the test's own, and removes it when the test ends.
func containerCgroup(t *testing.T, base, podUID, cid string) string {
	t.Helper()
	dir := filepath.Join(base, "kubepods", "burstable", "pod"+podUID, cid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		cgrouptest.Skip(t, "cannot create cgroups under %s: %v", unifiedRoot, err)
	}
	t.Cleanup(func() {
		// Children first; each must be empty of processes by now.
		for p := dir; len(p) > len(unifiedRoot); p = filepath.Dir(p) {
			err := os.Remove(p)
			switch {
			case errors.Is(err, syscall.EBUSY) && p != dir:
				return // a sibling container's cgroup still lives here; its cleanup removes the rest
			case err != nil && !errors.Is(err, os.ErrNotExist):
				t.Errorf("remove cgroup %s: %v", p, err)
				return
			case p == base:
				return
			}
		}
	})
	return dir
}

func scrapeText(t *testing.T, addr string) []byte {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	return promtest.Scrape(t, "http://"+addr+"/metrics")
}

// promtoolCheck runs `promtool check metrics` on exposition text. CI sets
// GPUSLICE_REQUIRE_PROMTOOL=1 and installs Debian's prometheus package, so
// there a missing promtool fails rather than skips.
func promtoolCheck(t *testing.T, text []byte) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("GPUSLICE_REQUIRE_PROMTOOL") != "" {
			t.Fatal("promtool is required (GPUSLICE_REQUIRE_PROMTOOL is set) but not on PATH")
		}
		t.Log("promtool not installed (apt-get install prometheus); skipping promtool check metrics")
		return
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics on the agent's /metrics: %v\n%s", err, out)
	}
}

// value returns the sample of family name whose labels include want.
var value = promtest.Value

// TestSharedGPUMetricsFromRealCgroups runs the agent binary on the fake
// node with two real workload processes, each moved into a real cgroup
// shaped like a different pod's container, sharing one GPU with different
// demands, and reads their use back from /metrics.
func TestSharedGPUMetricsFromRealCgroups(t *testing.T) {
	t.Parallel()
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-test-%d", os.Getpid()))
	st := stubKubelet(t, "preset: A100-40GB\ncount: 2\n")
	k, work := st.kubelet, st.work
	addr := freePort(t)
	startAgent(t, append(st.agentArgs(), "--metrics-address="+addr, "--sample-interval=200ms")...)
	p, err := k.WaitPlugin(ctxT(t), "nvidia.com/vgpu")
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.Allocate(ctxT(t), "ml/a", "main", 2)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Allocate(ctxT(t), "ml/b", "main", 4)
	if err != nil {
		t.Fatal(err)
	}
	gpu := a.Response.Envs["NVIDIA_VISIBLE_DEVICES"]
	if b.Response.Envs["NVIDIA_VISIBLE_DEVICES"] != gpu {
		t.Fatal("the two pods did not land on one GPU")
	}

	workload, err := fakegpu.BuildWorkload(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		pod, cid string
		mib      int
		demand   string
	}{
		{"ml/a", "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", 1024, "0.2"},
		{"ml/b", "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2", 4096, "0.5"},
	} {
		cg := containerCgroup(t, base, kubeletstub.PodUID(w.pod), w.cid)
		cmd := exec.Command(workload, "--dir", work, "--gpu", gpu, "--memory-mib", strconv.Itoa(w.mib), "--demand", w.demand)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Registered after the cgroup's removal, so it runs first.
		t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
			t.Fatalf("move workload into %s: %v", cg, err)
		}
	}

	podA := map[string]string{"namespace": "ml", "pod": "a", "container": "main", "uuid": gpu}
	podB := map[string]string{"namespace": "ml", "pod": "b", "container": "main", "uuid": gpu}
	// Wait until both containers' processes are attributed.
	deadline := time.Now().Add(15 * time.Second)
	for {
		mfs := scrape(t, addr)
		ua, _ := value(mfs, "gpuslice_container_memory_used_bytes", podA)
		ub, _ := value(mfs, "gpuslice_container_memory_used_bytes", podB)
		if ua > 0 && ub > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containers never attributed; last scrape: %v", mfs["gpuslice_container_memory_used_bytes"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	first, t0 := scrape(t, addr), time.Now()
	time.Sleep(3 * time.Second)
	second, t1 := scrape(t, addr), time.Now()
	rate := func(labels map[string]string) float64 {
		v0, _ := value(first, "gpuslice_container_gpu_busy_seconds_total", labels)
		v1, _ := value(second, "gpuslice_container_gpu_busy_seconds_total", labels)
		return (v1 - v0) / t1.Sub(t0).Seconds()
	}
	ra, rb := rate(podA), rate(podB)
	// A loaded machine can only slow the fake workloads, never speed them:
	// judge the ceilings, that both ran, and their proportion.
	if ra > 0.25 || rb > 0.55 || ra <= 0 || rb/ra < 1.8 || rb/ra > 3.5 {
		t.Errorf("busy seconds per second: a %.3f (demand 0.2), b %.3f (demand 0.5)", ra, rb)
	}
	ma, _ := value(second, "gpuslice_container_memory_used_bytes", podA)
	mb, _ := value(second, "gpuslice_container_memory_used_bytes", podB)
	if ma != 1024<<20 || mb != 4096<<20 {
		t.Errorf("memory used: a %.0f, b %.0f", ma, mb)
	}
	dev := map[string]string{"uuid": gpu}
	du, _ := value(second, "gpuslice_device_utilization_ratio", dev)
	ua, _ := value(second, "gpuslice_container_sm_utilization_ratio", podA)
	ub, _ := value(second, "gpuslice_container_sm_utilization_ratio", podB)
	if math.Abs(du-(ua+ub)) > 0.05 || du > 0.8 || du <= 0 {
		t.Errorf("device utilization %.3f, containers %.3f + %.3f", du, ua, ub)
	}
	dm, _ := value(second, "gpuslice_device_memory_used_bytes", dev)
	if dm != ma+mb {
		t.Errorf("device memory used %.0f, containers %.0f + %.0f", dm, ma, mb)
	}
	if lim, _ := value(second, "gpuslice_container_compute_limit_ratio", podB); lim != 0.5 {
		t.Errorf("b's compute limit = %v, want 0.5 (4 of 8 slices)", lim)
	}
	if n, _ := value(second, "gpuslice_agent_unattributed_processes", dev); n != 0 {
		t.Errorf("%v unattributed processes", n)
	}
	promtoolCheck(t, scrapeText(t, addr))

	// A real Prometheus scraping the agent answers per-pod questions.
	prom := startPrometheus(t, addr)
	waitQuery(t, prom, `sum by (pod) (rate(gpuslice_container_gpu_busy_seconds_total{namespace="ml"}[5s]))`, "pod",
		map[string]float64{"a": 0.2, "b": 0.5}, 0.1)
	waitQuery(t, prom, `sum by (pod) (gpuslice_container_memory_used_bytes{namespace="ml"}) / 2^20`, "pod",
		map[string]float64{"a": 1024, "b": 4096}, 0)
}
