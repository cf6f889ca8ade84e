package quota

import (
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/api/v1alpha1"
)

// TestKueueBudgetNotEnforcedIsSaid: a GPUQuota whose budget Kueue's
// AdmissionCheck should hold, on a controller serving no check, says so in
// its status (BudgetNotEnforced), never silently unenforced; served, the
// condition is false; a ResourceQuota-mode GPUQuota has no such condition.
func TestKueueBudgetNotEnforcedIsSaid(t *testing.T) {
	budget := &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}
	for _, tc := range []struct {
		name      string
		spec      Spec
		served    bool
		want      string // "" when the condition is absent
		hardIsNil bool // spent: a ResourceQuota at what is held, for any budget
	}{
		{"Kueue, no check served", Spec{Admission: AdmissionKueue, Budget: budget}, false, "True", false},
		{"Kueue, check served", Spec{Admission: AdmissionKueue, Budget: budget}, true, "False", false},
		{"Kueue, no budget", Spec{Admission: AdmissionKueue}, false, "False", true},
		{"ResourceQuota", Spec{Budget: budget}, false, "", false},
	} {
		in := Input{Spec: tc.spec, MetricsOK: true, UsedGPUHours: 5, Now: now, KueueServed: tc.served} // spent
		d := Decide(in)
		if (d.Hard == nil) != tc.hardIsNil {
			t.Errorf("%s: ResourceQuota limit %v", tc.name, d.Hard)
		}
		st := statusFor(&v1alpha1.GPUQuota{}, &in, d, now, nil)
		got := ""
		for _, c := range st.Conditions {
			if c.Type == ConditionBudgetNotEnforced {
				got = string(c.Status)
			}
		}
		if got != tc.want {
			t.Errorf("%s: %s = %q, want %q", tc.name, ConditionBudgetNotEnforced, got, tc.want)
		}
	}
}
