package quota_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// podUse is one pod's history as the agent would have exported it.
type podUse struct {
	ns, pod     string
	util, limit float64
	// unmeasured: the agent could not measure the pod's compute (a MIG
	// instance without GPM): no utilization or busy series, and
	// gpuslice_container_compute_unmeasured 1.
	unmeasured bool
}

// history is the OpenMetrics text of the agents' per-container series for
// pods over [from, to), one sample every step.
func history(pods []podUse, from, to time.Time, step time.Duration) []byte {
	var b strings.Builder
	family := func(name, typ, sample string, value func(p podUse, elapsed float64) float64) {
		fmt.Fprintf(&b, "# TYPE %s %s\n", name, typ)
		for _, p := range pods {
			if p.unmeasured && (typ == "counter" || name == "gpuslice_container_sm_utilization_ratio") {
				continue
			}
			labels := fmt.Sprintf(`{namespace=%q,pod=%q,container="main",gpu="0",uuid="GPU-a",instance="node-a",gpuslice_scrape_namespace="gpuslice-system"}`, p.ns, p.pod)
			for t := from; t.Before(to); t = t.Add(step) {
				fmt.Fprintf(&b, "%s%s %s %d\n", sample, labels, strconv.FormatFloat(value(p, t.Sub(from).Seconds()), 'f', -1, 64), t.Unix())
			}
		}
	}
	family("gpuslice_container_sm_utilization_ratio", "gauge", "gpuslice_container_sm_utilization_ratio", func(p podUse, _ float64) float64 { return p.util })
	family("gpuslice_container_gpu_busy_seconds", "counter", "gpuslice_container_gpu_busy_seconds_total", func(p podUse, s float64) float64 { return p.util * s })
	family("gpuslice_container_compute_limit_ratio", "gauge", "gpuslice_container_compute_limit_ratio", func(p podUse, _ float64) float64 { return p.limit })
	family("gpuslice_container_compute_unmeasured", "gauge", "gpuslice_container_compute_unmeasured", func(p podUse, _ float64) float64 {
		if p.unmeasured {
			return 1
		}
		return 0
	})
	b.WriteString("# EOF\n")
	return []byte(b.String())
}

func gpuPod(ns, name string, started time.Time) *corev1.Pod {
	st := metav1.NewTime(started)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{"nvidia.com/vgpu": resource.MustParse("1")}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &st},
	}
}

func gpuQuotaObject(ns string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gpuslice.io/v1alpha1", "kind": "GPUQuota",
		"metadata": map[string]any{"name": "team", "namespace": ns, "uid": "uid-" + ns},
		"spec":     spec,
	}}
}

// TestControllerGlueOnBackfilledHistory runs the controller's glue on
// client-go's fake clientsets against a real Prometheus holding two hours
// of backfilled history: the Busy and Allocated budgets lower the
// ResourceQuotas it manages with QuotaLimitChanged Events, the idle pod is
// evicted, a PodDisruptionBudget's refusal is an Event and no error, busy
// and young pods are left alone, and the status says all of it.
func TestControllerGlueOnBackfilledHistory(t *testing.T) {
	t.Parallel()
	now := time.Now().Truncate(time.Second)
	old := now.Add(-3 * time.Hour)
	promURL := promtest.StartBackfilled(t, history([]podUse{
		{"ml", "idle", 0, 0.1, false}, {"ml", "busy", 0.8, 0.1, false}, {"ml", "blocked", 0.01, 0.1, false}, {"ml", "young", 0, 0.1, false},
		{"alloc", "holder", 0, 0.5, false},
	}, now.Add(-2*time.Hour-5*time.Minute), now.Add(-time.Minute), 15*time.Second))

	objs := []runtime.Object{
		gpuPod("ml", "idle", old), gpuPod("ml", "busy", old), gpuPod("ml", "blocked", old), gpuPod("ml", "young", now.Add(-10*time.Minute)),
		gpuPod("alloc", "holder", old),
	}
	// A namespace of pods Prometheus has no history of: all unknown.
	for i := range 25 {
		objs = append(objs, gpuPod("fresh", fmt.Sprintf("p%02d", i), old))
	}
	kube := kubefake.NewClientset(objs...)
	var mu sync.Mutex
	var evicted []string
	kube.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		name := a.(k8stesting.CreateAction).GetObject().(metav1.Object).GetName()
		if name == "blocked" {
			return true, nil, apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 10)
		}
		mu.Lock()
		evicted = append(evicted, name)
		mu.Unlock()
		return true, nil, nil
	})
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{quota.GVR: "GPUQuotaList"},
		gpuQuotaObject("ml", map[string]any{"maxSlices": int64(8),
			"budget": map[string]any{"gpuHours": 1.0, "window": "2h"},
			"idle":   map[string]any{"belowUtilization": 0.05, "for": "1h", "action": "Evict"}}),
		gpuQuotaObject("alloc", map[string]any{"budget": map[string]any{"gpuHours": 0.5, "window": "2h", "source": "Allocated"}}),
		gpuQuotaObject("fresh", map[string]any{"idle": map[string]any{"belowUtilization": 0.05, "for": "1h", "action": "Evict"}}))
	q, err := quota.NewQuerier(promURL)
	if err != nil {
		t.Fatal(err)
	}
	ctrl := quota.New(kube, dyn, q, quota.Options{ScrapeInterval: 15 * time.Second, QueryTimeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := ctrl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := ctrl.Evaluate(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("one cycle, %d queries", n)

	mu.Lock()
	if !slices.Equal(evicted, []string{"idle"}) {
		t.Errorf("evicted %v, want only the idle pod", evicted)
	}
	mu.Unlock()
	for ns, want := range map[string]int64{"ml": 4, "alloc": 1} {
		rq, err := kube.CoreV1().ResourceQuotas(ns).Get(ctx, quota.QuotaName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("ResourceQuota in %s: %v", ns, err)
		}
		if got := rq.Spec.Hard["requests.nvidia.com/vgpu"]; got.Value() != want {
			t.Errorf("%s: ResourceQuota hard %s, want %d (the budget is spent: what it holds)", ns, got.String(), want)
		}
	}
	status := func(ns string) map[string]any {
		obj, err := dyn.Resource(quota.GVR).Namespace(ns).Get(ctx, "team", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st, _, _ := unstructured.NestedMap(obj.Object, "status")
		return st
	}
	ml := status("ml")
	hours, _ := strconv.ParseFloat(fmt.Sprint(ml["usedGPUHours"]), 64)
	if math.Abs(hours-1.6) > 0.1 {
		t.Errorf("ml used %v GPU-hours, want about 1.6 (0.8 of a GPU for 2 hours)", ml["usedGPUHours"])
	}
	if got := fmt.Sprint(ml["idlePods"]); got != "[blocked idle]" {
		t.Errorf("idle pods %s, want [blocked idle]", got)
	}
	if got := fmt.Sprint(ml["unknownPods"]); got != "[]" {
		t.Errorf("unknown pods %s, want none: the history covers the window", got)
	}
	fresh := status("fresh")["unknownPods"].([]any)
	if len(fresh) != quota.MaxUnknownInStatus+1 || !strings.HasPrefix(fmt.Sprint(fresh[quota.MaxUnknownInStatus]), "and 5 more") {
		t.Errorf("status lists %d unknown pods, last %v; want %d and a count of the rest", len(fresh), fresh[len(fresh)-1], quota.MaxUnknownInStatus)
	}
	conds := map[string]string{}
	for _, c := range ml["conditions"].([]any) {
		m := c.(map[string]any)
		conds[m["type"].(string)] = m["status"].(string)
	}
	if conds[quota.ConditionBudgetExhausted] != "True" || conds[quota.ConditionMetricsUnavailable] != "False" || conds[quota.ConditionIdlenessUnknown] != "False" {
		t.Errorf("conditions %v", conds)
	}
	// Events, recorded asynchronously.
	want := map[string]bool{"QuotaLimitChanged/ml": false, "QuotaLimitChanged/alloc": false, "GPUIdleEvicted/ml": false, "GPUIdleEvictionBlocked/ml": false}
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, _ := kube.CoreV1().Events("").List(ctx, metav1.ListOptions{})
		for _, e := range evs.Items {
			if _, ok := want[e.Reason+"/"+e.Namespace]; ok {
				want[e.Reason+"/"+e.Namespace] = true
			}
		}
		missing := 0
		for _, seen := range want {
			if !seen {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events seen %v", want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBudgetChargesUnmeasuredComputeAtItsShare: a busy-time budget charges
// what the agent measured, and, for a container whose compute it cannot
// measure (a MIG instance on an A100), the share the container holds over
// that time: unknown use is never free. Judged on a real Prometheus over an
// hour of backfilled history; the busy time alone (the query before this)
// charges the unmeasured namespace nothing.
func TestBudgetChargesUnmeasuredComputeAtItsShare(t *testing.T) {
	t.Parallel()
	now := time.Now().Truncate(time.Second)
	promURL := promtest.StartBackfilled(t, history([]podUse{
		{"meas", "a", 0.5, 0.5, false}, {"mig", "b", 0, 1, true}, {"mixed", "c", 0.25, 0.5, false}, {"mixed", "d", 0, 1, true},
	}, now.Add(-70*time.Minute), now.Add(time.Second), 15*time.Second))
	q, err := quota.NewQuerier(promURL)
	if err != nil {
		t.Fatal(err)
	}
	budget := quota.Budget{GPUHours: 10, Window: quota.Duration{Duration: time.Hour}}
	u, err := quota.Measure(context.Background(), q, []quota.Spec{{Budget: &budget}}, now, 10*time.Second, quota.DefaultSeries, quota.Recording{})
	if err != nil {
		t.Fatal(err)
	}
	got := u.GPUHours[quota.BudgetKey(budget)]
	for ns, want := range map[string]float64{"meas": 0.5, "mig": 1, "mixed": 1.25} {
		if math.Abs(got[ns]-want) > 0.05*want {
			t.Errorf("namespace %s charged %.3f GPU-hours, want %.2f (all: %v)", ns, got[ns], want, got)
		}
	}
	old := `sum by (namespace) (increase(gpuslice_container_gpu_busy_seconds_total{gpuslice_scrape_namespace="gpuslice-system"}[1h])) / 3600`
	v, _, err := q.Query(context.Background(), old, now)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(v.String(), `namespace="mig"`) {
		t.Errorf("busy time alone charges the unmeasured namespace: %s", v)
	}
}
