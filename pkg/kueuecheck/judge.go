// Package kueuecheck is gpu-quota-controller's Kueue AdmissionCheck for
// GPU-hour budgets: a Workload queued through a ClusterQueue that lists
// an AdmissionCheck of this controller is admitted only while its
// namespace's GPUQuota has budget left, as the quota controller last
// measured it. Kueue reserves the ClusterQueue's quota first; the check
// then decides whether the workload starts. Running workloads are never
// stopped when a budget runs out: the check judges admission only.
// Judge is pure; Controller reads Kueue's objects and writes the check's
// state into each Workload's status.
package kueuecheck

import (
	"fmt"

	"github.com/gpuslice/gpuslice/pkg/quota"
)

// DefaultControllerName is the AdmissionCheck controllerName this
// controller serves unless told another.
const DefaultControllerName = "gpuslice.io/gpu-budget"

// Check states, as Kueue's API defines them.
const (
	StatePending = "Pending"
	StateReady   = "Ready"
)

// Verdict is the check's state for one workload, with its message.
type Verdict struct {
	State   string
	Message string
}

// Judge decides the check for a workload costing at most cost, of a
// namespace whose budget is st. Only a measured budget with room admits:
// room for the workload's whole cost where that is known (its maximum
// execution time set), otherwise any room. A namespace without a
// GPUQuota, or whose GPUQuota has no budget, has nothing to check. Unknown
// use (never measured, an invalid GPUQuota, one no cycle has judged yet)
// keeps the workload pending, saying why: unknown is never free.
func Judge(st quota.BudgetState, cost Cost) Verdict {
	switch {
	case st.Status == quota.StatusNoQuota:
		return Verdict{StateReady, "no GPUQuota in the namespace: no GPU-hour budget applies"}
	case st.Status == quota.StatusNotEvaluated:
		return Verdict{StatePending, "the namespace's GPUQuota has not been evaluated yet; waiting for its first cycle"}
	case st.Invalid != "":
		return Verdict{StatePending, fmt.Sprintf("GPUQuota %s is not applied (%s); its budget cannot be judged", st.Quota, st.Invalid)}
	case st.Budget == nil:
		return Verdict{StateReady, fmt.Sprintf("GPUQuota %s sets no GPU-hour budget", st.Quota)}
	}
	b := st.Budget
	outage := ""
	if st.MetricsUnavailable {
		outage = "; Prometheus unavailable: the last measured use"
	}
	switch {
	case !st.Measured && st.MetricsUnavailable:
		return Verdict{StatePending, fmt.Sprintf("GPU-hour budget of GPUQuota %s cannot be judged: Prometheus unavailable and the namespace's use never measured; waiting", st.Quota)}
	case !st.Measured:
		return Verdict{StatePending, fmt.Sprintf("GPU-hour budget of GPUQuota %s cannot be judged: the namespace's GPU-hours are not valid numbers in Prometheus; waiting", st.Quota)}
	case st.Exhausted && st.RoomAfter > 0:
		return Verdict{StatePending, fmt.Sprintf("GPU-hour budget of GPUQuota %s spent: %.4g of %.4g GPU-hours used over the last %s%s; if no more is used, room returns within about %s, as older use leaves the window",
			st.Quota, st.UsedGPUHours, b.GPUHours, b.Window, outage, st.RoomAfter)}
	case st.Exhausted:
		return Verdict{StatePending, fmt.Sprintf("GPU-hour budget of GPUQuota %s spent: %.4g of %.4g GPU-hours used over the last %s%s; room returns as use older than %s leaves the window",
			st.Quota, st.UsedGPUHours, b.GPUHours, b.Window, outage, b.Window)}
	case cost.Known() && cost.GPUHours() > b.GPUHours:
		return Verdict{StatePending, fmt.Sprintf("the workload may use %.4g GPU-hours (%s), more than the whole GPU-hour budget of GPUQuota %s (%.4g over %s): it fits only if the budget grows or its maximumExecutionTimeSeconds shrinks",
			cost.GPUHours(), cost, st.Quota, b.GPUHours, b.Window)}
	case cost.Known() && st.UsedGPUHours+cost.GPUHours() > b.GPUHours:
		return Verdict{StatePending, fmt.Sprintf("GPU-hour budget of GPUQuota %s: %.4g of %.4g GPU-hours used over the last %s%s, and the workload may use %.4g more (%s); waiting for room",
			st.Quota, st.UsedGPUHours, b.GPUHours, b.Window, outage, cost.GPUHours(), cost)}
	}
	msg := fmt.Sprintf("GPU-hour budget of GPUQuota %s: %.4g of %.4g GPU-hours used over the last %s%s", st.Quota, st.UsedGPUHours, b.GPUHours, b.Window, outage)
	switch {
	case cost.Known():
		msg += fmt.Sprintf("; the workload may use %.4g more (%s)", cost.GPUHours(), cost)
	case cost.MaxExecution > 0 && cost.Slices > 0:
		msg += "; its own cost is not judged: no node says how many slices its GPUs are cut into"
	}
	return Verdict{StateReady, msg}
}
