package quota

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/api/v1alpha1"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// applyQuota makes the namespace's ResourceQuota say d.Hard and
// d.ClaimDevices, for the keys the controller manages; with no limit left
// it deletes the ResourceQuota.
func (c *Controller) applyQuota(ctx context.Context, owner *v1alpha1.GPUQuota, ns string, d Decision) error {
	managed := []corev1.ResourceName{corev1.ResourceName("requests." + c.opts.Resource)}
	for _, class := range c.opts.DeviceClasses {
		managed = append(managed, corev1.ResourceName(DeviceClassQuotaKey(class)))
	}
	for class := range d.ClaimDevices {
		if !slices.Contains(c.opts.DeviceClasses, class) { // an uncapped class seen reaching gpuslice's devices
			managed = append(managed, corev1.ResourceName(DeviceClassQuotaKey(class)))
		}
	}
	want := corev1.ResourceList{}
	if d.Hard != nil {
		want[managed[0]] = *resource.NewQuantity(*d.Hard, resource.DecimalSI)
	}
	for class, n := range d.ClaimDevices {
		want[corev1.ResourceName(DeviceClassQuotaKey(class))] = *resource.NewQuantity(n, resource.DecimalSI)
	}
	rqs := c.kube.CoreV1().ResourceQuotas(ns)
	cur, err := c.quotas.ResourceQuotas(ns).Get(QuotaName)
	switch {
	case apierrors.IsNotFound(err) && len(want) == 0:
		return nil
	case apierrors.IsNotFound(err):
		rq := &corev1.ResourceQuota{
			ObjectMeta: metav1.ObjectMeta{Name: QuotaName, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/managed-by": "gpuslice-quota-controller"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: v1alpha1.GroupVersion.String(), Kind: "GPUQuota", Name: owner.Name, UID: owner.UID}}},
			Spec: corev1.ResourceQuotaSpec{Hard: want},
		}
		if _, err := rqs.Create(ctx, rq, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create ResourceQuota %s/%s: %w", ns, QuotaName, err)
		}
		c.quotaChanged(owner, ns, d)
		return nil
	case err != nil:
		return err
	case len(want) == 0:
		if err := rqs.Delete(ctx, QuotaName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		c.quotaChanged(owner, ns, d)
		return nil
	}
	same := true
	for _, key := range managed {
		have, hok := cur.Spec.Hard[key]
		w, wok := want[key]
		same = same && hok == wok && (!hok || have.Cmp(w) == 0)
	}
	if same {
		return nil
	}
	upd := cur.DeepCopy()
	if upd.Spec.Hard == nil {
		upd.Spec.Hard = corev1.ResourceList{}
	}
	for _, key := range managed {
		delete(upd.Spec.Hard, key)
	}
	for key, q := range want {
		upd.Spec.Hard[key] = q
	}
	if _, err := rqs.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update ResourceQuota %s/%s: %w", ns, QuotaName, err)
	}
	c.quotaChanged(owner, ns, d)
	return nil
}

func (c *Controller) quotaChanged(owner *v1alpha1.GPUQuota, ns string, d Decision) {
	c.metrics.quotaUpdates.Inc()
	limit := "none"
	if d.Hard != nil {
		limit = fmt.Sprint(*d.Hard)
	}
	c.log.Info("GPU quota limit changed", "namespace", ns, "limit", limit, "reason", d.Reason, "claimDevices", d.ClaimDevices, "claimReason", d.ClaimReason)
	msg := fmt.Sprintf("requests.%s limited to %s: %s", c.opts.Resource, limit, d.Reason)
	if len(c.opts.DeviceClasses) > 0 {
		claims := "not limited"
		if d.ClaimDevices != nil {
			classes := make([]string, 0, len(d.ClaimDevices))
			for class, n := range d.ClaimDevices {
				classes = append(classes, fmt.Sprintf("%s devices %d", class, n))
			}
			sort.Strings(classes)
			claims = strings.Join(classes, ", ") + ": " + d.ClaimReason
		}
		msg += "; claims: " + claims
	}
	c.events.Event(owner, corev1.EventTypeNormal, "QuotaLimitChanged", msg)
}

func (c *Controller) annotate(ctx context.Context, ns, name string, now time.Time) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{AnnotationIdleSince: now.UTC().Format(time.RFC3339)}}})
	p, err := c.kube.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("annotate idle pod %s/%s: %w", ns, name, err)
	}
	c.metrics.annotations.Inc()
	c.log.Info("idle pod annotated", "namespace", ns, "pod", name)
	c.events.Event(p, corev1.EventTypeNormal, "GPUIdle", "The pod holds GPU slices it has not used; marked "+AnnotationIdleSince)
	return nil
}

// evict evicts an idle pod through the Eviction API or, for a GPUQuota
// with admission Kueue, reclaims it through its Kueue Workload.
func (c *Controller) evict(ctx context.Context, ns, name string, spec Spec) error {
	idle := spec.Idle
	p, err := c.pods.Pods(ns).Get(name)
	if err != nil {
		return nil //nolint:nilerr // gone already
	}
	why := fmt.Sprintf("its GPU utilization stayed below %.0f%% for %s", idle.BelowUtilization*100, idle.For)
	if spec.Admission == AdmissionKueue && c.opts.Reclaimer != nil {
		handled, err := c.opts.Reclaimer.Reclaim(ctx, p, why)
		if err != nil {
			return fmt.Errorf("reclaim idle pod %s/%s through Kueue: %w", ns, name, err)
		}
		if handled {
			c.metrics.evictions.Inc()
			c.log.Info("idle pod reclaimed through its Kueue Workload", "namespace", ns, "pod", name)
			c.events.Eventf(p, corev1.EventTypeWarning, "GPUIdleReclaimed", "Its Kueue Workload was deactivated, to be requeued once evicted: %s", why)
			return nil
		}
	}
	ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	err = c.kube.CoreV1().Pods(ns).EvictV1(ctx, ev)
	switch {
	case err == nil:
		c.metrics.evictions.Inc()
		c.log.Info("idle pod evicted", "namespace", ns, "pod", name)
		c.events.Eventf(p, corev1.EventTypeWarning, "GPUIdleEvicted", "Evicted: %s", why)
		return nil
	case apierrors.IsTooManyRequests(err):
		// A PodDisruptionBudget forbids it now; try again next cycle.
		c.events.Eventf(p, corev1.EventTypeWarning, "GPUIdleEvictionBlocked", "Idle, but a PodDisruptionBudget blocks its eviction: %v", err)
		return nil
	case apierrors.IsNotFound(err):
		return nil
	}
	return fmt.Errorf("evict idle pod %s/%s: %w", ns, name, err)
}
