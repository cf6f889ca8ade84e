package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// quotaRig is a real Prometheus scraping the agent the way
// prometheus-operator configures it from the chart's ServiceMonitor, the
// GPUQuota CRD, and gpu-quota-controller running against the cluster.
type quotaRig struct {
	t        *testing.T
	prom     string
	scrape   string
	stopProm func()
	dyn      dynamic.Interface
	ctrl     *apiserver.Process
}

// startQuotaRig starts Prometheus and the controller, with extra flags.
func startQuotaRig(t *testing.T, args ...string) *quotaRig {
	t.Helper()
	r := &quotaRig{t: t, scrape: operatorConfig(t, chartServiceMonitor(t))}
	port, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r.prom, r.stopProm = promtest.StartConfig(t, fmt.Sprintf("127.0.0.1:%d", port), r.scrape)
	kubectl := filepath.Join(apiserver.BinDir(), "kubectl")
	if out, err := exec.Command(kubectl, "--kubeconfig="+c.API.Kubeconfig, "apply", "-f", "../../deployments/crds/gpuslice.io_gpuquotas.yaml").CombinedOutput(); err != nil {
		t.Fatalf("apply the GPUQuota CRD: %v\n%s", err, out)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.API.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	r.dyn = dynamic.NewForConfigOrDie(cfg)
	r.startController(args...)
	t.Cleanup(func() {
		r.ctrl.Stop()
		if t.Failed() {
			t.Logf("controller log:\n%s", r.ctrl.Logs.Tail(6000))
		}
	})
	return r
}

// startController starts gpu-quota-controller, stopping the one running.
func (r *quotaRig) startController(args ...string) {
	r.t.Helper()
	if r.ctrl != nil {
		r.ctrl.Stop()
	}
	all := append([]string{"--kubeconfig=" + c.API.Kubeconfig, "--prometheus-url=" + r.prom,
		"--interval=2s", "--query-timeout=1s", "--scrape-interval=1s", "--metrics-address=127.0.0.1:0", "--leader-election-namespace=default", "--log-level=debug",
		// The chart's ServiceMonitor, rendered in namespace gpuslice, labels
		// the agents' series with it: the controller believes those alone.
		`--agent-series=gpuslice_scrape_namespace="gpuslice"`}, args...)
	ctrl, err := apiserver.StartProcess("gpu-quota-controller", controllerBin, all...)
	if err != nil {
		r.t.Fatal(err)
	}
	r.ctrl = ctrl
}

// gpuQuota creates the GPUQuota "team" in ns.
func (r *quotaRig) gpuQuota(ns string, spec map[string]any) {
	r.t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gpuslice.io/v1alpha1", "kind": "GPUQuota",
		"metadata": map[string]any{"name": "team", "namespace": ns}, "spec": spec,
	}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := r.dyn.Resource(quota.GVR).Namespace(ns).Create(context.Background(), obj, metav1.CreateOptions{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) { // the CRD takes a moment to be served
			r.t.Fatalf("create GPUQuota: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// status is the GPUQuota "team" of ns as stored ("" fields when absent).
func (r *quotaRig) status(ns string) map[string]any {
	u, err := r.dyn.Resource(quota.GVR).Namespace(ns).Get(context.Background(), "team", metav1.GetOptions{})
	if err != nil {
		return nil
	}
	st, _, _ := unstructured.NestedMap(u.Object, "status")
	return st
}

// condition is the status of a condition of ns's GPUQuota.
func (r *quotaRig) condition(ns, typ string) string {
	conds, _, _ := unstructured.NestedSlice(r.status(ns), "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == typ {
			return fmt.Sprint(m["status"])
		}
	}
	return ""
}

// waitFor polls ok every half second for up to d.
func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, d)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestQuotaController runs gpu-quota-controller against the cluster and a
// real Prometheus scraping the agent the way prometheus-operator configures
// it from the chart's ServiceMonitor, with fake GPU workloads in pods.
func TestQuotaController(t *testing.T) {
	rig := startQuotaRig(t)
	prom, scrape, stopProm, dyn := rig.prom, rig.scrape, rig.stopProm, rig.dyn
	gpuQuota, condition := rig.gpuQuota, rig.condition
	cs := c.API.Clientset(t)
	ctx := context.Background()
	waitFor := func(what string, d time.Duration, ok func() bool) {
		t.Helper()
		waitFor(t, what, d, ok)
	}

	t.Run("budget exhausted lowers the quota", func(t *testing.T) {
		ns := newNamespace(t, "budget")
		gpuQuota(ns, map[string]any{"maxSlices": int64(4), "budget": map[string]any{"gpuHours": 0.0003, "window": "1h"}})
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("burner", 1, "exec /bin/workload --demand 1 --memory-mib 256")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRunning(t, ns, "burner")
		start := time.Now()
		waitFor("BudgetExhausted", 60*time.Second, func() bool { return condition(ns, quota.ConditionBudgetExhausted) == "True" })
		t.Logf("budget of 0.0003 GPU-hours exhausted %v after the pod ran", time.Since(start).Round(time.Second))
		waitFor("ResourceQuota lowered to what is in use", 20*time.Second, func() bool {
			rq, err := cs.CoreV1().ResourceQuotas(ns).Get(ctx, quota.QuotaName, metav1.GetOptions{})
			if err != nil {
				return false
			}
			h := rq.Spec.Hard["requests.nvidia.com/vgpu"]
			u, ok := rq.Status.Hard["requests.nvidia.com/vgpu"]
			return h.Value() == 1 && ok && u.Value() == 1
		})
		_, err := cs.CoreV1().Pods(ns).Create(ctx, pod("latecomer", 1, "sleep 3600"), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "exceeded quota") {
			t.Fatalf("a new GPU pod in a namespace over its budget: %v; want an exceeded quota rejection", err)
		}
		t.Logf("rejected: %v", err)
		if p, err := cs.CoreV1().Pods(ns).Get(ctx, "burner", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodRunning {
			t.Errorf("the running pod was disturbed: %v", err)
		}
	})

	t.Run("idle pod evicted, busy pod on the same GPU left alone", func(t *testing.T) {
		ns := newNamespace(t, "idle")
		gpuQuota(ns, map[string]any{"idle": map[string]any{"belowUtilization": 0.05, "for": "15s", "action": "Evict"}})
		for _, p := range []struct{ name, demand string }{{"sleeper", "0"}, {"worker", "0.5"}} {
			if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod(p.name, 1, "exec /bin/workload --memory-mib 256 --demand "+p.demand)), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		waitRunning(t, ns, "sleeper")
		waitRunning(t, ns, "worker")
		// binpack puts both on one GPU: the idle one shares it with a busy one.
		if g1, g2 := assignmentGPU(t, ns, "sleeper"), assignmentGPU(t, ns, "worker"); g1 != g2 {
			t.Fatalf("the pods are on different GPUs (%s, %s); the test needs them to share one", g1, g2)
		}
		start := time.Now()
		waitFor("idle pod evicted", 90*time.Second, func() bool {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, "sleeper", metav1.GetOptions{})
			return apierrors.IsNotFound(err) || (err == nil && p.DeletionTimestamp != nil)
		})
		t.Logf("idle pod evicted %v after it ran (idle for: 15s)", time.Since(start).Round(time.Second))
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "worker", metav1.GetOptions{})
		if err != nil || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			t.Errorf("the busy pod was touched: %v", err)
		}
		// The controller records the Event after the eviction, through
		// client-go's asynchronous recorder: wait for it.
		waitFor("the GPUIdleEvicted event on the pod", 30*time.Second, func() bool {
			evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=sleeper"})
			if err != nil {
				return false
			}
			for _, e := range evs.Items {
				if e.Reason == "GPUIdleEvicted" {
					return true
				}
			}
			return false
		})
	})

	t.Run("idle pod annotated, opted-out pod spared", func(t *testing.T) {
		ns := newNamespace(t, "mark")
		gpuQuota(ns, map[string]any{"idle": map[string]any{"belowUtilization": 0.05, "for": "10s", "action": "Annotate", "allowOptOut": true}})
		quiet := withHostPID(pod("quiet", 1, "exec /bin/workload --memory-mib 128 --demand 0"))
		optedOut := withHostPID(pod("opted-out", 1, "exec /bin/workload --memory-mib 128 --demand 0"))
		optedOut.Annotations = map[string]string{quota.AnnotationOptOut: "true"}
		for _, p := range []*corev1.Pod{quiet, optedOut} {
			if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		waitRunning(t, ns, "quiet")
		waitRunning(t, ns, "opted-out")
		waitFor("idle annotation", 60*time.Second, func() bool {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, "quiet", metav1.GetOptions{})
			return err == nil && p.Annotations[quota.AnnotationIdleSince] != ""
		})
		waitFor("both pods listed idle in status", 20*time.Second, func() bool {
			u, err := dyn.Resource(quota.GVR).Namespace(ns).Get(ctx, "team", metav1.GetOptions{})
			if err != nil {
				return false
			}
			idle, _, _ := unstructured.NestedStringSlice(u.Object, "status", "idlePods")
			return strings.Join(idle, ",") == "opted-out,quiet"
		})
		for _, name := range []string{"quiet", "opted-out"} {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil || p.DeletionTimestamp != nil {
				t.Errorf("%s was removed by an Annotate policy: %v", name, err)
			}
			if name == "opted-out" && p != nil && p.Annotations[quota.AnnotationIdleSince] != "" {
				t.Error("the opted-out pod was annotated")
			}
		}
	})

	t.Run("prometheus down, then back without its history: nothing evicted until the window is covered again", func(t *testing.T) {
		ns := newNamespace(t, "blind")
		gpuQuota(ns, map[string]any{"idle": map[string]any{"belowUtilization": 0.05, "for": "15s", "action": "Evict"}})
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("napper", 1, "exec /bin/workload --memory-mib 256 --demand 0")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRunning(t, ns, "napper")
		stopProm()
		waitFor("MetricsUnavailable", 30*time.Second, func() bool { return condition(ns, quota.ConditionMetricsUnavailable) == "True" })
		time.Sleep(25 * time.Second) // well past the idle window
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "napper", metav1.GetOptions{})
		if err != nil || p.DeletionTimestamp != nil {
			t.Fatalf("a pod was evicted while Prometheus was down: %v", err)
		}
		// Back, with empty storage: the pod has run far longer than the
		// window, and the few samples there are all say 0, but they do not
		// cover the window yet.
		promtest.StartConfig(t, strings.TrimPrefix(prom, "http://"), scrape)
		back := time.Now()
		waitFor("MetricsUnavailable cleared", 30*time.Second, func() bool { return condition(ns, quota.ConditionMetricsUnavailable) == "False" })
		waitFor("the pod listed with unknown idleness", 30*time.Second, func() bool {
			u, err := dyn.Resource(quota.GVR).Namespace(ns).Get(ctx, "team", metav1.GetOptions{})
			if err != nil {
				return false
			}
			unknown, _, _ := unstructured.NestedStringSlice(u.Object, "status", "unknownPods")
			return len(unknown) == 1 && strings.HasPrefix(unknown[0], "napper: only")
		})
		if p, err := cs.CoreV1().Pods(ns).Get(ctx, "napper", metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
			t.Fatalf("evicted %v after Prometheus came back without its history: %v", time.Since(back).Round(time.Second), err)
		}
		// Once the window is covered again, the idle pod is reclaimed: the
		// rule can say yes.
		waitFor("idle pod evicted once the window is covered", 90*time.Second, func() bool {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, "napper", metav1.GetOptions{})
			return apierrors.IsNotFound(err) || (err == nil && p.DeletionTimestamp != nil)
		})
		if took := time.Since(back); took < 14*time.Second {
			t.Errorf("evicted %v after Prometheus came back, before a 15 s window could be covered", took.Round(time.Second))
		}
		t.Logf("evicted %v after Prometheus came back with empty storage (idle for: 15s)", time.Since(back).Round(time.Second))
	})
}

// assignmentGPU is the GPU of a pod's first slice.
func assignmentGPU(t *testing.T, ns, name string) string {
	ids := assignment(t, ns, name)
	g, _, _ := strings.Cut(ids[0], "::")
	return g
}
