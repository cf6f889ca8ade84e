package quota

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/api/v1alpha1"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// statusFor is the status a cycle writes: for an invalid spec, the reason
// alone; otherwise what was measured and decided, with the conditions.
// Conditions that did not change keep their transition times.
func statusFor(q *v1alpha1.GPUQuota, in *Input, d Decision, now time.Time, invalid error) v1alpha1.GPUQuotaStatus {
	at := metav1.NewTime(now.UTC().Truncate(time.Second))
	cond := func(typ string, on bool, reason, msg string) v1alpha1.Condition {
		status := v1alpha1.ConditionStatus("False")
		if on {
			status = "True"
		}
		// Keep the transition time of a condition that did not change.
		t := at
		for _, o := range q.Status.Conditions {
			if o.Type == typ && o.Status == status && o.LastTransitionTime != nil {
				t = *o.LastTransitionTime
			}
		}
		return v1alpha1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: &t}
	}
	status := v1alpha1.GPUQuotaStatus{LastEvaluationTime: &at}
	if invalid != nil {
		status.Conditions = []v1alpha1.Condition{cond("Invalid", true, "InvalidSpec", invalid.Error())}
	} else {
		status.UsedSlices = &in.UsedSlices
		status.UsedGPUHours = fmt.Sprintf("%.4f", d.UsedGPUHours)
		status.IdlePods = append([]string{}, d.Idle...)
		status.UnknownPods = []string{}
		for i, p := range d.Unknown {
			if i == MaxUnknownInStatus {
				status.UnknownPods = append(status.UnknownPods, fmt.Sprintf("and %d more (gpuslice_quota_idleness_unknown_pods counts them all)", len(d.Unknown)-i))
				break
			}
			status.UnknownPods = append(status.UnknownPods, p)
		}
		status.SliceLimit = d.Hard
		status.Conditions = []v1alpha1.Condition{
			cond(ConditionBudgetExhausted, d.BudgetExhausted, "Budget", d.Reason),
			cond(ConditionMetricsUnavailable, !in.MetricsOK, "Prometheus", "GPU-hours and idleness come from Prometheus; without a complete answer nothing is reclaimed"),
			cond(ConditionIdlenessUnknown, len(d.Unknown) > 0, "Evidence", "pods whose idleness Prometheus cannot show are never reclaimed; see status.unknownPods"),
		}
		if in.Spec.Admission == AdmissionKueue {
			unheld := in.Spec.Budget != nil && (!in.KueueServed || len(in.UncoveredQueues) > 0)
			msg := "the controller's Kueue AdmissionCheck holds new Workloads back while the budget is spent"
			switch {
			case in.Spec.Budget != nil && !in.KueueServed:
				msg = "admission Kueue, but this controller serves no Kueue AdmissionCheck (--kueue-admission-check): nothing holds new work back when the budget is spent"
			case unheld:
				msg = "work queued through these LocalQueues skips the budget's AdmissionCheck: " + strings.Join(in.UncoveredQueues, ", ") + "; list the AdmissionCheck in their ClusterQueue's admissionChecksStrategy"
			}
			status.Conditions = append(status.Conditions, cond(ConditionBudgetNotEnforced, unheld, "Kueue", msg))
		}
		if in.Claims != nil {
			used := in.Claims.Slices
			status.UsedClaimSlices = &used
			status.ClaimDeviceLimits = d.ClaimDevices
			msg := d.ClaimReason
			if d.ClaimDevices == nil {
				msg = "nothing limits the namespace's claims"
			}
			status.Conditions = append(status.Conditions, cond(ConditionClaimsLimited, d.ClaimDevices != nil, "Claims", msg))
			uncapped := "every device class reaching gpuslice's devices is capped"
			if len(in.Claims.Uncapped) > 0 {
				uncapped = d.ClaimReason
			}
			status.Conditions = append(status.Conditions, cond(ConditionUncappedDeviceClass, len(in.Claims.Uncapped) > 0, "Claims", uncapped))
		}
	}
	return status
}

// writeStatus records a quota's status, or why it could not be evaluated.
func (c *Controller) writeStatus(ctx context.Context, q gpuQuota, in *Input, d Decision, now time.Time, invalid error) error {
	status := statusFor(q.obj, in, d, now, invalid)
	// What changes what users act on: not the evaluation time, and not
	// GPU-hours creeping up (refreshed with the heartbeat; the limit itself
	// is decided from fresh numbers every cycle).
	material := status
	material.LastEvaluationTime, material.UsedGPUHours = nil, ""
	key, _ := json.Marshal(struct {
		Generation int64
		Status     v1alpha1.GPUQuotaStatus
	}{q.obj.Generation, material})
	sig := strings.ReplaceAll(string(key), status.LastEvaluationTime.UTC().Format(time.RFC3339), "")
	uid := q.obj.UID
	c.mu.Lock()
	w, ok := c.written[uid]
	c.mu.Unlock()
	if ok && w.status == sig && now.Sub(w.at) < heartbeat(uid) {
		return nil
	}
	unstructuredStatus, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&status)
	if err != nil {
		return err
	}
	for k, v := range unstructuredStatus {
		if v == nil {
			delete(unstructuredStatus, k) // not listed, rather than null
		}
	}
	upd := q.raw.DeepCopy()
	upd.Object["status"] = unstructuredStatus
	if _, err := c.dyn.Resource(GVR).Namespace(q.obj.Namespace).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			return nil // the cache was behind; next cycle
		}
		return fmt.Errorf("status of GPUQuota %s/%s: %w", q.obj.Namespace, q.obj.Name, err)
	}
	c.mu.Lock()
	c.written[uid] = written{status: sig, at: now}
	c.mu.Unlock()
	return nil
}
