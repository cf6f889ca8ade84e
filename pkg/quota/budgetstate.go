package quota

import (
	"time"

	"k8s.io/apimachinery/pkg/labels"
)

// BudgetState is what the controller last decided of a namespace's
// GPU-hour budget, for admission outside the ResourceQuota (Kueue's
// AdmissionCheck, pkg/kueuecheck).
type BudgetState struct {
	// Status says whether the namespace has a GPUQuota and whether a cycle
	// has judged it; the fields below hold only for StatusEvaluated.
	Status BudgetStatus
	// Quota is the ruling GPUQuota's name.
	Quota string
	// Budget is its budget; nil: it has none.
	Budget *Budget
	// Invalid says why the GPUQuota was not applied (an invalid spec, or
	// a second GPUQuota in the namespace); empty when it was.
	Invalid string
	// UsedGPUHours and Exhausted are the last decision's.
	UsedGPUHours float64
	Exhausted    bool
	// Measured is Decision.Measured: false while the use was never read.
	Measured bool
	// MetricsUnavailable is true when the last cycle could not read
	// Prometheus: UsedGPUHours and Exhausted are then the last known.
	MetricsUnavailable bool
	// RoomAfter is, for a spent budget, about how long until it has room
	// if nothing more is used (to 1/RoomSteps of its window); zero when
	// not known.
	RoomAfter time.Duration
}

// BudgetStatus is whether a namespace's budget is known.
type BudgetStatus int

// Budget statuses.
const (
	// StatusNoQuota: the namespace has no GPUQuota.
	StatusNoQuota BudgetStatus = iota
	// StatusNotEvaluated: it has one no completed cycle has judged yet.
	StatusNotEvaluated
	// StatusEvaluated: the last cycle judged it.
	StatusEvaluated
)

// BudgetOf is the namespace's budget state as of the last cycle. Until a
// cycle of the running controller has completed, every namespace is
// StatusNotEvaluated (its caches may not hold its GPUQuota yet); after, a
// GPUQuota the informer holds that no cycle has judged yet is too, never
// StatusNoQuota.
func (c *Controller) BudgetOf(ns string) BudgetState {
	c.mu.Lock()
	st, ok := c.budgets[ns]
	cycled := !c.started.IsZero() && !c.completed.IsZero()
	c.mu.Unlock()
	switch {
	case !cycled:
		return BudgetState{Status: StatusNotEvaluated}
	case ok:
		return st
	}
	objs, err := c.gpuq.ByNamespace(ns).List(labels.Everything())
	if err != nil || len(objs) > 0 {
		return BudgetState{Status: StatusNotEvaluated}
	}
	return BudgetState{Status: StatusNoQuota}
}

// recordBudget keeps what a cycle decided of the namespace's GPUQuota q.
func (c *Controller) recordBudget(q gpuQuota, d Decision, metricsOK bool, invalid error, room time.Duration) {
	st := BudgetState{Status: StatusEvaluated, Quota: q.obj.Name, Budget: q.obj.Spec.Budget,
		UsedGPUHours: d.UsedGPUHours, Exhausted: d.BudgetExhausted, Measured: d.Measured, MetricsUnavailable: !metricsOK, RoomAfter: room}
	if invalid != nil {
		st.Invalid = invalid.Error()
	}
	c.mu.Lock()
	c.budgets[q.obj.Namespace] = st
	c.mu.Unlock()
}
