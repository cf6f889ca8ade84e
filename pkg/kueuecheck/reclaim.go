package kueuecheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// AnnotationReclaimed marks a Workload the controller deactivated because
// its pods held GPUs they did not use, with when. Once Kueue has evicted
// it (its pods stopped, its quota released), the controller activates it
// again and removes the mark, so Kueue requeues it: reclaimed work waits
// in its queue, never fails.
const AnnotationReclaimed = "gpuslice.io/idle-reclaimed"

// Reclaim reclaims an idle pod through its Kueue Workload: the Workload
// of the Job that owns the pod is deactivated (spec.active false) and
// marked AnnotationReclaimed; Sync activates it again once Kueue has
// evicted it. False when no Workload owns the pod's Job: the pod is not
// Kueue's.
func (c *Controller) Reclaim(ctx context.Context, pod *corev1.Pod, why string) (bool, error) {
	for _, synced := range c.synced {
		if !synced() {
			// Not knowing its Workload is no reason to evict it instead.
			return false, errors.New("workloads of Kueue not listed yet")
		}
	}
	w := c.workloadOf(pod)
	if w == nil {
		return false, nil
	}
	if _, ok := w.GetAnnotations()[AnnotationReclaimed]; ok {
		return true, nil // deactivated already; Sync requeues it
	}
	patch, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{AnnotationReclaimed: time.Now().UTC().Format(time.RFC3339)}},
		"spec":     map[string]any{"active": false},
	})
	if _, err := c.dyn.Resource(Workloads).Namespace(w.GetNamespace()).Patch(ctx, w.GetName(), types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		return false, fmt.Errorf("deactivate Workload %s/%s: %w", w.GetNamespace(), w.GetName(), err)
	}
	c.log.Info("idle workload deactivated, to be requeued", "namespace", w.GetNamespace(), "workload", w.GetName(), "pod", pod.Name, "why", why)
	return true, nil
}

// workloadOf is the Workload owning the Job that owns pod, or nil.
func (c *Controller) workloadOf(pod *corev1.Pod) *unstructured.Unstructured {
	job := metav1.GetControllerOf(pod)
	if job == nil || job.Kind != "Job" {
		return nil
	}
	objs, err := c.wls.ByNamespace(pod.Namespace).List(labels.Everything())
	if err != nil {
		return nil
	}
	for _, o := range objs {
		w, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		for _, ref := range w.GetOwnerReferences() {
			if ref.UID == job.UID {
				return w
			}
		}
	}
	return nil
}

// requeue activates again a Workload the controller deactivated for
// idleness, once Kueue has evicted it and released its quota.
func (c *Controller) requeue(ctx context.Context, w *unstructured.Unstructured) error {
	if _, ok := w.GetAnnotations()[AnnotationReclaimed]; !ok {
		return nil
	}
	active, found, _ := unstructured.NestedBool(w.Object, "spec", "active")
	if found && active {
		return nil // activated by someone else
	}
	if !conditionTrue(w, "Evicted") || conditionTrue(w, "QuotaReserved") {
		return nil // Kueue has not stopped it yet
	}
	patch, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]any{AnnotationReclaimed: nil}},
		"spec":     map[string]any{"active": true},
	})
	if _, err := c.dyn.Resource(Workloads).Namespace(w.GetNamespace()).Patch(ctx, w.GetName(), types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("requeue Workload %s/%s: %w", w.GetNamespace(), w.GetName(), err)
	}
	c.log.Info("idle workload requeued", "namespace", w.GetNamespace(), "workload", w.GetName())
	return nil
}
