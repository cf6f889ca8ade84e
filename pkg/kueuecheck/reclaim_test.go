package kueuecheck

import (
	"context"
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
	gvrs := map[schema.GroupVersionResource]string{AdmissionChecks: "AdmissionCheckList", Workloads: "WorkloadList"}
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
