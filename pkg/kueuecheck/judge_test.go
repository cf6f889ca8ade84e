package kueuecheck

import (
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/quota"
)

// TestJudge: only a measured budget with room admits; unknown use, an
// invalid GPUQuota, one not judged yet and an outage with nothing
// measured keep the workload pending and say why.
func TestJudge(t *testing.T) {
	budget := &quota.Budget{GPUHours: 10, Window: quota.Duration{Duration: 24 * time.Hour}}
	evaluated := func(st quota.BudgetState) quota.BudgetState {
		st.Status, st.Quota = quota.StatusEvaluated, "team"
		if st.Budget == nil && st.Invalid == "" {
			st.Budget = budget
		}
		return st
	}
	for _, tc := range []struct {
		name  string
		st    quota.BudgetState
		state string
		says  []string
	}{
		{"no GPUQuota", quota.BudgetState{Status: quota.StatusNoQuota}, StateReady, []string{"no GPU-hour budget applies"}},
		{"a GPUQuota not judged yet", quota.BudgetState{Status: quota.StatusNotEvaluated}, StatePending, []string{"not been evaluated yet"}},
		{"a GPUQuota without a budget", quota.BudgetState{Status: quota.StatusEvaluated, Quota: "caps"}, StateReady, []string{"GPUQuota caps sets no GPU-hour budget"}},
		{"room left", evaluated(quota.BudgetState{UsedGPUHours: 9.5, Measured: true}), StateReady, []string{"9.5 of 10 GPU-hours", "24h0m0s"}},
		{"spent", evaluated(quota.BudgetState{UsedGPUHours: 10, Exhausted: true, Measured: true}), StatePending, []string{"GPUQuota team spent", "10 of 10 GPU-hours", "room returns"}},
		{"spent, room estimated", evaluated(quota.BudgetState{UsedGPUHours: 10, Exhausted: true, Measured: true, RoomAfter: 3 * time.Hour}), StatePending, []string{"spent", "room returns within about 3h0m0s"}},
		{"spent, Prometheus down since", evaluated(quota.BudgetState{UsedGPUHours: 12, Exhausted: true, Measured: true, MetricsUnavailable: true}), StatePending, []string{"spent", "Prometheus unavailable: the last measured use"}},
		{"room left when last measured, Prometheus down", evaluated(quota.BudgetState{UsedGPUHours: 1, Measured: true, MetricsUnavailable: true}), StateReady, []string{"1 of 10", "Prometheus unavailable: the last measured use"}},
		{"never measured, Prometheus down", evaluated(quota.BudgetState{MetricsUnavailable: true}), StatePending, []string{"cannot be judged", "Prometheus unavailable", "never measured"}},
		{"GPU-hours not valid numbers", evaluated(quota.BudgetState{}), StatePending, []string{"cannot be judged", "not valid numbers"}},
		{"an invalid GPUQuota", evaluated(quota.BudgetState{Invalid: "namespace ml already has GPUQuota a"}), StatePending, []string{"not applied", "already has GPUQuota a"}},
	} {
		v := Judge(tc.st, Cost{})
		if v.State != tc.state {
			t.Errorf("%s: %s (%q), want %s", tc.name, v.State, v.Message, tc.state)
		}
		for _, s := range tc.says {
			if !strings.Contains(v.Message, s) {
				t.Errorf("%s: message %q does not say %q", tc.name, v.Message, s)
			}
		}
	}
}

// TestJudgeCost: with a maximum execution time and a known slice share, a
// workload is admitted only if its whole cost fits the room left; one
// costing more than the whole budget says it never fits as is; without a
// maximum execution time any room admits, and without a known share the
// message says its cost is not judged.
func TestJudgeCost(t *testing.T) {
	st := quota.BudgetState{Status: quota.StatusEvaluated, Quota: "team", Measured: true, UsedGPUHours: 6,
		Budget: &quota.Budget{GPUHours: 10, Window: quota.Duration{Duration: 24 * time.Hour}}}
	// 4 slices of 1/8 GPU for 4h: 2 GPU-hours; for 20h: 10; for 100h: 50.
	cost := func(h int) Cost {
		return Cost{Slices: 4, SliceShare: 1.0 / 8, MaxExecution: time.Duration(h) * time.Hour}
	}
	for _, tc := range []struct {
		name  string
		cost  Cost
		state string
		says  string
	}{
		{"fits", cost(4), StateReady, "may use 2 more (4 slices of 1/8 GPU for up to 4h0m0s)"},
		{"does not fit the room left", cost(20), StatePending, "may use 10 more"},
		{"never fits the budget", cost(100), StatePending, "more than the whole GPU-hour budget"},
		{"no maximum execution time", Cost{Slices: 4, SliceShare: 1.0 / 8}, StateReady, "6 of 10"},
		{"no slice share known", Cost{Slices: 4, MaxExecution: 100 * time.Hour}, StateReady, "its own cost is not judged"},
	} {
		v := Judge(st, tc.cost)
		if v.State != tc.state || !strings.Contains(v.Message, tc.says) {
			t.Errorf("%s: %s %q, want %s saying %q", tc.name, v.State, v.Message, tc.state, tc.says)
		}
	}
}
