package multinode

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// quotaRig is a real Prometheus scraping every GPU node's agent at its
// node's address, labelled as the chart's ServiceMonitor labels them
// (instance: the node; gpuslice_scrape_namespace: the release's), and
// gpu-quota-controller reading it.
type quotaRig struct {
	t       *testing.T
	metrics string // the controller's /metrics
	dyn     dynamic.Interface
	ctrl    *apiserver.Process
}

func startQuota(t *testing.T) *quotaRig {
	t.Helper()
	var b strings.Builder
	b.WriteString("  - job_name: gpuslice-agent\n    static_configs:\n")
	for _, name := range gpuNodes {
		fmt.Fprintf(&b, "    - {targets: [\"%s:%d\"], labels: {instance: %q, gpuslice_scrape_namespace: %s}}\n", node(name).IP, metricsPort, name, releaseNS)
	}
	prom, _ := promtest.Start(t, b.String())
	cfg, err := clientcmd.BuildConfigFromFlags("", m.API.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	port, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &quotaRig{t: t, metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", port), dyn: dynamic.NewForConfigOrDie(cfg)}
	r.ctrl, err = apiserver.StartProcess("gpu-quota-controller", controllerBin, "--kubeconfig="+m.API.Kubeconfig, "--prometheus-url="+prom,
		"--interval=2s", "--query-timeout=2s", "--scrape-interval=1s", fmt.Sprintf("--metrics-address=127.0.0.1:%d", port),
		"--leader-election-namespace=default", `--agent-series=gpuslice_scrape_namespace="`+releaseNS+`"`)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			_ = syscall.Kill(r.ctrl.PID(), syscall.SIGQUIT)
			time.Sleep(2 * time.Second)
			t.Logf("controller log:\n%s", r.ctrl.Logs.Tail(60000))
		}
		r.ctrl.Stop()
	})
	return r
}

// gpuQuota creates the GPUQuota "team" in ns (the chart installed its CRD).
func (r *quotaRig) gpuQuota(ns string, spec map[string]any) {
	r.t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gpuslice.io/v1alpha1", "kind": "GPUQuota",
		"metadata": map[string]any{"name": "team", "namespace": ns}, "spec": spec,
	}}
	if _, err := r.dyn.Resource(quota.GVR).Namespace(ns).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		r.t.Fatalf("create GPUQuota: %v", err)
	}
}

// status is the GPUQuota "team" of ns's status.
func (r *quotaRig) status(ns string) map[string]any {
	u, err := r.dyn.Resource(quota.GVR).Namespace(ns).Get(context.Background(), "team", metav1.GetOptions{})
	if err != nil {
		return nil
	}
	st, _, _ := unstructured.NestedMap(u.Object, "status")
	return st
}

// usedSeconds is the controller's GPU-hours for ns, in GPU-seconds, as its
// gpuslice_quota_used_gpu_hours says every cycle (the status refreshes
// GPU-hours that only creep up once a minute or so); ok is false before
// the controller measured ns.
func (r *quotaRig) usedSeconds(ns string) (used float64, ok bool) {
	mfs, err := promtest.Fetch(r.metrics)
	if err != nil {
		return 0, false
	}
	for _, s := range mfs["gpuslice_quota_used_gpu_hours"].GetMetric() {
		if label(s, "namespace") == ns {
			return s.GetGauge().GetValue() * 3600, true
		}
	}
	return 0, false
}

// settled pauses the pods' workloads (SIGUSR1: they stop asking for GPU
// time, so their own accounts stop) and waits until the controller's
// figure for ns has stopped moving; it returns the figure and the
// workloads' own total.
func (r *quotaRig) settled(ns string, pods ...*corev1.Pod) (used, truth float64) {
	r.t.Helper()
	for _, p := range pods {
		pid := workloadPID(r.t, p)
		if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
			r.t.Fatalf("pause %s: %v", p.Name, err)
		}
	}
	time.Sleep(time.Second)
	for _, p := range pods {
		truth += workedSeconds(r.t, p)
	}
	// The figure is settled when it has stayed within 2 % for 8 s (4 of
	// the controller's cycles; Prometheus' increase() extrapolates a
	// little, differently at each scrape, so it never stands still).
	paused := time.Now()
	var ref, last float64
	var since time.Time
	waitFor(r.t, "the controller's GPU-hours for "+ns+" settled", 60*time.Second, func() bool {
		u, ok := r.usedSeconds(ns)
		last = u
		if !ok || u == 0 || math.Abs(u-ref) > 0.02*ref {
			ref, since = u, time.Now()
			return false
		}
		return time.Since(since) >= 8*time.Second && time.Since(paused) >= 10*time.Second
	})
	return last, truth
}

// TestClusterGPUHoursSumAcrossNodes: a namespace's GPU-hours are the sum
// over its pods on every node, judged against the workloads' own accounts
// of the GPU time they asked for. The two pods' shares are 3:1, so a
// figure from either node alone (75 % or 25 % of the truth) fails.
func TestClusterGPUHoursSumAcrossNodes(t *testing.T) {
	r := startQuota(t)
	ns := namespace(t, "hours")
	r.gpuQuota(ns, map[string]any{"budget": map[string]any{"gpuHours": 100.0, "window": "1h"}})
	create(t, ns, workloadPod("big", slicesPerGPU, "0.6", gpuNodes[0]), workloadPod("small", 1, "0.2", gpuNodes[1]))
	big, small := waitRunning(t, ns, "big"), waitRunning(t, ns, "small")
	waitAgentReports(t, big)
	waitAgentReports(t, small)
	time.Sleep(40 * time.Second)
	used, truth := r.settled(ns, big, small)
	t.Logf("GPU-seconds: controller %.1f, the workloads' own %.1f (big %.1f on %s, small %.1f on %s)", used, truth,
		workedSeconds(t, big), big.Spec.NodeName, workedSeconds(t, small), small.Spec.NodeName)
	if used < 0.85*truth || used > 1.1*truth {
		t.Errorf("the namespace's GPU-seconds are %.1f; its workloads asked for %.1f over both nodes", used, truth)
	}
}

// TestClusterNodeLoss: one node's network is cut, so its agent can no
// longer be scraped and the API server no longer reaches it. Its busy pod
// is listed unknown, never idle, never evicted, and never charged with
// figures nobody measured; kubectl gpuslice names the node unreachable
// instead of showing old figures; when the node returns, its pod's GPU
// time over the cut is charged once, as measured.
func TestClusterNodeLoss(t *testing.T) {
	r := startQuota(t)
	ns := namespace(t, "loss")
	r.gpuQuota(ns, map[string]any{
		"budget": map[string]any{"gpuHours": 100.0, "window": "1h"},
		"idle":   map[string]any{"belowUtilization": 0.05, "for": "15s", "action": "Evict"},
	})
	lost := node(gpuNodes[1])
	create(t, ns, workloadPod("near", 2, "0.3", gpuNodes[0]), workloadPod("far", 2, "0.3", lost.Name))
	near, far := waitRunning(t, ns, "near"), waitRunning(t, ns, "far")
	waitAgentReports(t, near)
	waitAgentReports(t, far)
	waitFor(t, "both pods measured", 60*time.Second, func() bool {
		u, ok := r.usedSeconds(ns)
		return ok && u > 2
	})
	if err := lost.CutNetwork(); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := lost.RestoreNetwork(); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(restore)
	cut := time.Now()
	waitFor(t, "far listed unknown", 60*time.Second, func() bool {
		return strings.Contains(fmt.Sprint(r.status(ns)["unknownPods"]), "far")
	})
	// Past the idle rule's 15 s and more: never idle, never evicted, and
	// never charged past what the workloads did.
	cs := m.API.Clientset(t)
	for time.Since(cut) < 45*time.Second {
		st := r.status(ns)
		if strings.Contains(fmt.Sprint(st["idlePods"]), "far") {
			t.Fatalf("the unreachable node's busy pod was listed idle: %v", st["idlePods"])
		}
		if used, ok := r.usedSeconds(ns); ok {
			if truth := workedSeconds(t, near) + workedSeconds(t, far); used > 1.1*truth {
				t.Fatalf("during the cut the namespace was charged %.1f GPU-seconds; its workloads asked for %.1f", used, truth)
			}
		}
		time.Sleep(time.Second)
	}
	if p, err := cs.CoreV1().Pods(ns).Get(context.Background(), "far", metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
		t.Fatalf("the unreachable node's pod was evicted: %v", err)
	}
	checkPluginNamesLostNode(t, lost.Name)
	restore()
	waitFor(t, "far no longer unknown", 90*time.Second, func() bool {
		st := r.status(ns)
		return st != nil && !strings.Contains(fmt.Sprint(st["unknownPods"]), "far")
	})
	used, truth := r.settled(ns, near, far)
	t.Logf("GPU-seconds after the node returned: controller %.1f, the workloads' own %.1f", used, truth)
	if used > 1.1*truth {
		t.Errorf("after the node returned the namespace was charged %.1f GPU-seconds; its workloads asked for %.1f: counted twice", used, truth)
	}
	if used < 0.85*truth {
		t.Errorf("after the node returned the namespace was charged %.1f GPU-seconds; its workloads asked for %.1f: the cut's GPU time was lost", used, truth)
	}
}

// checkPluginNamesLostNode runs kubectl gpuslice top nodes as a user
// would (a kubeconfig, agents read through the API server) and wants the
// lost node listed unreachable, the other shown.
func checkPluginNamesLostNode(t *testing.T, lost string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(apiserver.BinDir(), "kubectl"), "gpuslice", "top", "nodes")
	cmd.Env = []string{"PATH=" + filepath.Dir(pluginBin) + ":" + os.Getenv("PATH"), "KUBECONFIG=" + m.API.Kubeconfig, "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	t.Logf("kubectl gpuslice top nodes, %s cut:\n%s", lost, out)
	if err != nil {
		t.Fatalf("kubectl gpuslice top nodes: %v", err)
	}
	var lostRow, otherRow bool
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 1 && f[0] == lost:
			lostRow = strings.Contains(line, "unreachable")
		case len(f) > 1 && f[0] == gpuNodes[0]:
			otherRow = !strings.Contains(line, "unreachable")
		}
	}
	if !lostRow || !otherRow || !strings.Contains(string(out), "warning: node "+lost+" is unreachable") {
		t.Errorf("kubectl gpuslice top nodes did not name %s unreachable and show %s", lost, gpuNodes[0])
	}
}
