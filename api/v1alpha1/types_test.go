package v1alpha1_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/api/v1alpha1"
)

// TestGPUQuotaRoundTrip: a GPUQuota as users write it reads into the
// types and back without loss, durations as strings.
func TestGPUQuotaRoundTrip(t *testing.T) {
	in := `{"apiVersion":"gpuslice.io/v1alpha1","kind":"GPUQuota","metadata":{"name":"team","namespace":"ml"},` +
		`"spec":{"maxSlices":8,"budget":{"gpuHours":100,"window":"168h","source":"Allocated"},"idle":{"belowUtilization":0.05,"for":"30m","action":"Evict","allowOptOut":true}}}`
	var q v1alpha1.GPUQuota
	if err := json.Unmarshal([]byte(in), &q); err != nil {
		t.Fatal(err)
	}
	if q.Spec.Budget.Window.Duration != 168*time.Hour || q.Spec.Idle.For.Duration != 30*time.Minute || *q.Spec.MaxSlices != 8 {
		t.Fatalf("spec = %+v", q.Spec)
	}
	if err := q.Spec.Validate(); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(q.Spec)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"window":"168h0m0s"`) {
		t.Errorf("marshalled spec %s", out)
	}
	c := q.DeepCopy()
	*c.Spec.MaxSlices = 1
	if *q.Spec.MaxSlices != 8 {
		t.Error("DeepCopy shares the spec")
	}
}

func TestValidate(t *testing.T) {
	neg, eight := int64(-1), int64(8)
	for name, spec := range map[string]v1alpha1.GPUQuotaSpec{
		"negative slices":       {MaxSlices: &neg},
		"negative claim slices": {MaxClaimSlices: &neg},
		"short window":          {Budget: &v1alpha1.Budget{GPUHours: 1, Window: v1alpha1.Duration{Duration: time.Second}}},
		"unknown source":        {Budget: &v1alpha1.Budget{GPUHours: 1, Window: v1alpha1.Duration{Duration: time.Hour}, Source: "Guess"}},
		"zero ratio":            {Idle: &v1alpha1.Idle{For: v1alpha1.Duration{Duration: time.Minute}, Action: v1alpha1.ActionNone}},
		"short idle":            {Idle: &v1alpha1.Idle{BelowUtilization: 0.1, For: v1alpha1.Duration{Duration: time.Second}, Action: v1alpha1.ActionNone}},
		"unknown action":        {Idle: &v1alpha1.Idle{BelowUtilization: 0.1, For: v1alpha1.Duration{Duration: time.Minute}, Action: "Delete"}},
		"unknown admission":     {Admission: "Volcano"},
		"Kueue with maxSlices":  {Admission: v1alpha1.AdmissionKueue, MaxSlices: &eight},
		"Kueue with claims cap": {Admission: v1alpha1.AdmissionKueue, MaxClaimSlices: &eight},
	} {
		if err := spec.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	kueue := v1alpha1.GPUQuotaSpec{Admission: v1alpha1.AdmissionKueue, Budget: &v1alpha1.Budget{GPUHours: 1, Window: v1alpha1.Duration{Duration: time.Hour}}}
	if err := kueue.Validate(); err != nil {
		t.Errorf("a Kueue-mode budget: %v", err)
	}
	var d v1alpha1.Duration
	if err := json.Unmarshal([]byte(`3600`), &d); err == nil {
		t.Error("a number was accepted as a duration")
	}
}
