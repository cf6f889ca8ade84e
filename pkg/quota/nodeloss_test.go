package quota_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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

// lossyAgent is a node's agent whose network can be cut (its scrapes
// fail) and whose process can restart (its busy counters start again from
// zero, as a new process's do). Its pods' utilization is constant; their
// busy seconds climb at it while the process runs, cut or not.
type lossyAgent struct {
	ns   string
	util map[string]float64 // pod -> utilization
	mu   sync.Mutex
	cut  bool
	born time.Time // the process's start
}

func (a *lossyAgent) set(cut, restart bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cut = cut
	if restart {
		a.born = time.Now()
	}
}

func (a *lossyAgent) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cut {
		http.Error(w, "no route to host", http.StatusBadGateway)
		return
	}
	var b strings.Builder
	b.WriteString("# TYPE gpuslice_container_sm_utilization_ratio gauge\n")
	for pod, u := range a.util {
		fmt.Fprintf(&b, "gpuslice_container_sm_utilization_ratio{namespace=%q,pod=%q,container=\"main\",gpu=\"0\",uuid=\"GPU-a\"} %g\n", a.ns, pod, u)
	}
	b.WriteString("# TYPE gpuslice_container_gpu_busy_seconds counter\n")
	for pod, u := range a.util {
		fmt.Fprintf(&b, "gpuslice_container_gpu_busy_seconds_total{namespace=%q,pod=%q,container=\"main\",gpu=\"0\",uuid=\"GPU-a\"} %g\n", a.ns, pod, u*time.Since(a.born).Seconds())
	}
	b.WriteString("# TYPE gpuslice_agent_gpu_blind gauge\ngpuslice_agent_gpu_blind{gpu=\"0\",uuid=\"GPU-a\"} 0\n")
	_, _ = w.Write([]byte(b.String()))
}

// TestNodeLossNeverIdlesNorCharges is node loss against the controller and
// a real Prometheus: node-b's network is cut for a while and comes back
// (its agent kept measuring), node-c's agent also restarts as it comes back
// (its counters start again). Their pods that read zero are never idle (a
// gap in the window: unknown, not evicted), and no budget moves on
// invented numbers: node-b's namespace is charged what its pods really
// used, the gap included and nothing twice; node-c's at most that (what
// the old process measured during the cut is lost with it, never made
// up). node-a, never cut, keeps its idle pod idle: the check can fail.
// The cut is short enough that the cut pods keep the samples a window
// needs: their agents' failed scrapes (up == 0) alone keep them from being
// idle (without that rule all three idle pods are evicted: checked).
func TestNodeLossNeverIdlesNorCharges(t *testing.T) {
	t.Parallel()
	start := time.Now()
	agents := map[string]*lossyAgent{
		"node-a": {ns: "steady", util: map[string]float64{"a-idle": 0, "a-busy": 1}, born: start},
		"node-b": {ns: "cut", util: map[string]float64{"b-idle": 0, "b-busy": 1}, born: start},
		"node-c": {ns: "restarted", util: map[string]float64{"c-idle": 0, "c-busy": 1}, born: start},
	}
	var scrape strings.Builder
	for node, a := range agents {
		srv := httptest.NewServer(a)
		t.Cleanup(srv.Close)
		scrape.WriteString(promtest.StaticTarget("agent-"+node, strings.TrimPrefix(srv.URL, "http://"), node))
	}
	promURL, _ := promtest.Start(t, scrape.String())
	q, err := quota.NewQuerier(promURL)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second)
	agents["node-b"].set(true, false)
	agents["node-c"].set(true, false)
	time.Sleep(4 * time.Second)
	agents["node-b"].set(false, false)
	agents["node-c"].set(false, true)
	time.Sleep(5 * time.Second)
	now := time.Now()
	elapsed := now.Sub(start).Seconds()

	var objs []runtime.Object
	var quotas []runtime.Object
	for _, a := range agents {
		for pod := range a.util {
			objs = append(objs, gpuPod(a.ns, pod, start.Add(-time.Hour)))
		}
		quotas = append(quotas, gpuQuotaObject(a.ns, map[string]any{"idle": map[string]any{"belowUtilization": 0.05, "for": "12s", "action": "Evict"},
			"budget": map[string]any{"gpuHours": 10.0, "window": "1h"}}))
	}
	kube := kubefake.NewClientset(objs...)
	var mu sync.Mutex
	var evicted []string
	kube.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "eviction" {
			mu.Lock()
			evicted = append(evicted, a.(k8stesting.CreateAction).GetObject().(metav1.Object).GetName())
			mu.Unlock()
		}
		return a.GetSubresource() == "eviction", nil, nil
	})
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{quota.GVR: "GPUQuotaList"}, quotas...)
	// Prometheus scrapes every second; the controller is told every 2 s,
	// so a window needs 6 of its 12 samples: a loaded machine's missed
	// scrapes never make the steady idle pod unknown, and the cut nodes'
	// pods keep enough samples that only their agents' failed scrapes
	// (up == 0) keep them from being idle.
	ctrl := quota.New(kube, dyn, q, quota.Options{ScrapeInterval: 2 * time.Second, QueryTimeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := ctrl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.Evaluate(ctx, now); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	slices.Sort(evicted)
	if !slices.Equal(evicted, []string{"a-idle"}) {
		t.Errorf("evicted %v; want a-idle alone: a pod on a node that was cut is never idle", evicted)
	}
	mu.Unlock()
	status := func(ns string) map[string]any {
		obj, err := dyn.Resource(quota.GVR).Namespace(ns).Get(ctx, "team", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st, _, _ := unstructured.NestedMap(obj.Object, "status")
		return st
	}
	for ns, idle := range map[string]string{"cut": "b-idle", "restarted": "c-idle"} {
		st := status(ns)
		if got := fmt.Sprint(st["unknownPods"]); !strings.Contains(got, idle) {
			t.Errorf("%s: unknown pods %s; want %s listed unknown", ns, got, idle)
		}
	}
	// GPU-hours: each namespace's busy pod used a whole GPU throughout.
	u, err := quota.Measure(ctx, q, []quota.Spec{{Budget: &quota.Budget{GPUHours: 10, Window: quota.Duration{Duration: time.Hour}}}}, now, 10*time.Second, quota.DefaultSeries, quota.Recording{})
	if err != nil {
		t.Fatal(err)
	}
	used := u.GPUHours[quota.BudgetKey(quota.Budget{Window: quota.Duration{Duration: time.Hour}})]
	truth := elapsed / 3600
	t.Logf("GPU-hours: steady %.5f, cut %.5f, restarted %.5f; used %.5f each", used["steady"], used["cut"], used["restarted"], truth)
	// The first scrape comes up to a second after the start: a little less
	// than the truth is right, more than it never is.
	for _, ns := range []string{"steady", "cut", "restarted"} {
		if used[ns] > truth*1.02 {
			t.Errorf("%s charged %.5f GPU-hours, more than the %.5f used: invented", ns, used[ns], truth)
		}
	}
	if math.Abs(used["cut"]-used["steady"]) > 0.1*truth {
		t.Errorf("the cut node's namespace charged %.5f, the steady one %.5f: the gap's use, measured by the agent, must be charged once", used["cut"], used["steady"])
	}
}
