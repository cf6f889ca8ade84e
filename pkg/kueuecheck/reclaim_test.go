package kueuecheck

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/gpuslice/gpuslice/pkg/quota"
)

func workload(name, jobUID string) *unstructured.Unstructured {
	w := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "spec": map[string]any{}}}
	w.SetName(name)
	w.SetNamespace("ml")
	w.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "job", UID: types.UID(jobUID)}})
	return w
}

func jobPod(jobUID string) *corev1.Pod {
	yes := true
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "job-x", Namespace: "ml",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "job", UID: types.UID(jobUID), Controller: &yes}}}}
}

// TestReclaimDeactivatesThenRequeues: an idle pod's Workload (found through
// the pod's Job) is deactivated and marked; it is activated again, the
// mark gone, only once Kueue has evicted it and released its quota; a pod
// no Workload owns is not Kueue's (it is then evicted as any other).
func TestReclaimDeactivatesThenRequeues(t *testing.T) {
	scheme := runtime.NewScheme()
	gvrs := map[schema.GroupVersionResource]string{AdmissionChecks: "AdmissionCheckList", Workloads: "WorkloadList", LocalQueues: "LocalQueueList", ClusterQueues: "ClusterQueueList", Nodes: "NodeList"}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, gvrs, workload("job-idle", "uid-idle"), workload("job-other", "uid-other"))
	c := New(dyn, BudgetsFunc(func(string) quota.BudgetState { return quota.BudgetState{} }), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.factory.Start(ctx.Done())
	c.factory.WaitForCacheSync(ctx.Done())

	if handled, err := c.Reclaim(ctx, jobPod("uid-none"), "idle"); handled || err != nil {
		t.Fatalf("a pod no Workload owns: handled %t, %v", handled, err)
	}
	if handled, err := c.Reclaim(ctx, jobPod("uid-idle"), "idle"); !handled || err != nil {
		t.Fatalf("Reclaim: handled %t, %v", handled, err)
	}
	get := func() *unstructured.Unstructured {
		w, err := dyn.Resource(Workloads).Namespace("ml").Get(ctx, "job-idle", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	w := get()
	if active, found, _ := unstructured.NestedBool(w.Object, "spec", "active"); !found || active {
		t.Fatalf("spec.active after Reclaim: %t (set %t), want false", active, found)
	}
	if _, ok := w.GetAnnotations()[AnnotationReclaimed]; !ok {
		t.Fatal("not marked " + AnnotationReclaimed)
	}
	if err := c.requeue(ctx, w); err != nil {
		t.Fatal(err)
	}
	if active, _, _ := unstructured.NestedBool(get().Object, "spec", "active"); active {
		t.Fatal("activated again before Kueue evicted it")
	}
	// Kueue evicts it and releases its quota.
	w = get()
	_ = unstructured.SetNestedSlice(w.Object, []any{
		map[string]any{"type": "Evicted", "status": "True"}, map[string]any{"type": "QuotaReserved", "status": "False"},
	}, "status", "conditions")
	if err := c.requeue(ctx, w); err != nil {
		t.Fatal(err)
	}
	w = get()
	if active, _, _ := unstructured.NestedBool(w.Object, "spec", "active"); !active {
		t.Fatal("not activated again once evicted: Kueue would never requeue it")
	}
	if _, ok := w.GetAnnotations()[AnnotationReclaimed]; ok {
		t.Fatal("still marked after the requeue")
	}
	other, err := dyn.Resource(Workloads).Namespace("ml").Get(ctx, "job-other", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, found, _ := unstructured.NestedBool(other.Object, "spec", "active"); found {
		t.Fatal("another Workload was touched")
	}
}

func kueueObj(kind, ns, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": kind, "spec": spec}}
	u.SetName(name)
	u.SetNamespace(ns)
	return u
}

// TestUncoveredNamesQueuesThatSkipTheCheck: a namespace's LocalQueue whose
// ClusterQueue lists none of the AdmissionChecks this controller serves
// (another controller's, one only on some flavors, or a ClusterQueue that
// does not exist) is named; one that lists a served check is not.
func TestUncoveredNamesQueuesThatSkipTheCheck(t *testing.T) {
	scheme := runtime.NewScheme()
	gvrs := map[schema.GroupVersionResource]string{AdmissionChecks: "AdmissionCheckList", Workloads: "WorkloadList", LocalQueues: "LocalQueueList", ClusterQueues: "ClusterQueueList", Nodes: "NodeList"}
	strategy := func(entries ...map[string]any) map[string]any {
		list := []any{}
		for _, e := range entries {
			list = append(list, e)
		}
		return map[string]any{"admissionChecksStrategy": map[string]any{"admissionChecks": list}}
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, gvrs,
		kueueObj("AdmissionCheck", "", "budget", map[string]any{"controllerName": DefaultControllerName}),
		kueueObj("AdmissionCheck", "", "prov", map[string]any{"controllerName": "kueue.x-k8s.io/provisioning-request"}),
		kueueObj("ClusterQueue", "", "held", strategy(map[string]any{"name": "prov"}, map[string]any{"name": "budget"})),
		kueueObj("ClusterQueue", "", "open", strategy(map[string]any{"name": "prov"})),
		kueueObj("ClusterQueue", "", "some", strategy(map[string]any{"name": "budget", "onFlavors": []any{"a100"}})),
		kueueObj("LocalQueue", "ml", "main", map[string]any{"clusterQueue": "held"}),
		kueueObj("LocalQueue", "ml", "side", map[string]any{"clusterQueue": "open"}),
		kueueObj("LocalQueue", "ml", "flavors", map[string]any{"clusterQueue": "some"}),
		kueueObj("LocalQueue", "ml", "ghost", map[string]any{"clusterQueue": "gone"}),
		kueueObj("LocalQueue", "other", "main", map[string]any{"clusterQueue": "open"}),
	)
	c := New(dyn, BudgetsFunc(func(string) quota.BudgetState { return quota.BudgetState{} }), Options{})
	if _, known := c.Uncovered("ml"); known {
		t.Fatal("known before the caches listed anything")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.factory.Start(ctx.Done())
	c.factory.WaitForCacheSync(ctx.Done())
	got, known := c.Uncovered("ml")
	want := []string{
		"flavors (ClusterQueue some lists gpuslice's AdmissionCheck only on some flavors)",
		"ghost (ClusterQueue gone not found)",
		"side (ClusterQueue open lists no AdmissionCheck gpuslice serves)",
	}
	if !known || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("Uncovered(ml) = %q (known %t), want %q", got, known, want)
	}
}
