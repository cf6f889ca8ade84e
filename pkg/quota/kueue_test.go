package quota

import (
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/api/v1alpha1"
)

// TestKueueBudgetNotEnforcedIsSaid: a GPUQuota whose budget Kueue's
// AdmissionCheck should hold, on a controller serving no check or with a
// LocalQueue whose ClusterQueue skips the check, says so in its status
// (BudgetNotEnforced, naming the queue), never silently unenforced;
// served and covered, the condition is false; a ResourceQuota-mode
// GPUQuota has no such condition.
func TestKueueBudgetNotEnforcedIsSaid(t *testing.T) {
	budget := &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}
	for _, tc := range []struct {
		name      string
		spec      Spec
		served    bool
		uncovered []string
		want      string // "" when the condition is absent
		hardIsNil bool   // spent: a ResourceQuota at what is held, for any budget
	}{
		{"Kueue, no check served", Spec{Admission: AdmissionKueue, Budget: budget}, false, nil, "True", false},
		{"Kueue, check served", Spec{Admission: AdmissionKueue, Budget: budget}, true, nil, "False", false},
		{"Kueue, a queue skips the check", Spec{Admission: AdmissionKueue, Budget: budget}, true, []string{"side (ClusterQueue open lists no AdmissionCheck gpuslice serves)"}, "True", false},
		{"Kueue, no budget", Spec{Admission: AdmissionKueue}, false, nil, "False", true},
		{"ResourceQuota", Spec{Budget: budget}, false, nil, "", false},
	} {
		in := Input{Spec: tc.spec, MetricsOK: true, UsedGPUHours: 5, Now: now, KueueServed: tc.served, UncoveredQueues: tc.uncovered} // spent
		d := Decide(in)
		if (d.Hard == nil) != tc.hardIsNil {
			t.Errorf("%s: ResourceQuota limit %v", tc.name, d.Hard)
		}
		st := statusFor(&v1alpha1.GPUQuota{}, &in, d, now, nil)
		got := ""
		for _, c := range st.Conditions {
			if c.Type == ConditionBudgetNotEnforced {
				got = string(c.Status)
				if len(tc.uncovered) > 0 && !strings.Contains(c.Message, tc.uncovered[0]) {
					t.Errorf("%s: message %q does not name the queue", tc.name, c.Message)
				}
			}
		}
		if got != tc.want {
			t.Errorf("%s: %s = %q, want %q", tc.name, ConditionBudgetNotEnforced, got, tc.want)
		}
	}
}

// TestRoomAfter: a spent budget has room again at the first step whose
// held use is under it; at the latest when the window holds nothing of
// today's use; unknown without every step.
func TestRoomAfter(t *testing.T) {
	w := 8 * time.Hour
	for _, tc := range []struct {
		name string
		held []float64
		want time.Duration
	}{
		{"used evenly", []float64{8.75, 7.5, 6.25, 5, 3.75, 2.5, 1.25}, 5 * time.Hour}, // at step 4 it holds exactly the budget: still spent
		{"used early in the window", []float64{1, 0, 0, 0, 0, 0, 0}, time.Hour},
		{"used just now", []float64{10, 10, 10, 10, 10, 10, 10}, 8 * time.Hour},
		{"a step missing", []float64{1, 0}, 0},
	} {
		if got := RoomAfter(w, 5, tc.held); got != tc.want {
			t.Errorf("%s: RoomAfter = %s, want %s", tc.name, got, tc.want)
		}
	}
	if b := roomBudget(Budget{GPUHours: 5, Window: Duration{Duration: w}}, 3); b.Window.Duration != 5*time.Hour {
		t.Errorf("step 3 of 8 measures the last %s, want 5h", b.Window)
	}
}
