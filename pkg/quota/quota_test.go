package quota

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func ptr(v int64) *int64 { return &v }

var now = time.Unix(1_800_000_000, 0)

func TestDecide(t *testing.T) {
	idleEvict := &Idle{BelowUtilization: 0.05, For: Duration{10 * time.Minute}, Action: ActionEvict, AllowOptOut: true}
	old := now.Add(-time.Hour)
	for _, tc := range []struct {
		name string
		in   Input
		want Decision
	}{{
		name: "cap only",
		in:   Input{Spec: Spec{MaxSlices: ptr(8)}, MetricsOK: true, UsedSlices: 3, Now: now},
		want: Decision{Hard: ptr(8), Reason: "maxSlices"},
	}, {
		name: "budget left",
		in:   Input{Spec: Spec{MaxSlices: ptr(8), Budget: &Budget{GPUHours: 10, Window: Duration{24 * time.Hour}}}, MetricsOK: true, UsedSlices: 3, UsedGPUHours: 9.9, Now: now},
		want: Decision{Hard: ptr(8), UsedGPUHours: 9.9, Reason: "maxSlices"},
	}, {
		name: "budget exhausted: limit lowered to what is held",
		in:   Input{Spec: Spec{MaxSlices: ptr(8), Budget: &Budget{GPUHours: 10, Window: Duration{24 * time.Hour}}}, MetricsOK: true, UsedSlices: 3, UsedGPUHours: 10, Now: now},
		want: Decision{Hard: ptr(3), BudgetExhausted: true, UsedGPUHours: 10, Reason: "GPU-hour budget exhausted: 10.00 of 10.00 used over 24h0m0s"},
	}, {
		name: "budget exhausted without a cap",
		in:   Input{Spec: Spec{Budget: &Budget{GPUHours: 1, Window: Duration{time.Hour}}}, MetricsOK: true, UsedSlices: 0, UsedGPUHours: 2, Now: now},
		want: Decision{Hard: ptr(0), BudgetExhausted: true, UsedGPUHours: 2, Reason: "GPU-hour budget exhausted: 2.00 of 1.00 used over 1h0m0s"},
	}, {
		name: "no cap, no budget: no ResourceQuota",
		in:   Input{Spec: Spec{Idle: idleEvict}, MetricsOK: true, Now: now},
		want: Decision{Reason: "maxSlices"},
	}, {
		name: "idle: evict the idle, spare the busy, the young, the unmeasured and the opted out",
		in: Input{Spec: Spec{Idle: idleEvict}, MetricsOK: true, Now: now, Pods: []Pod{
			{Name: "idle", Slices: 1, Running: true, Started: old, Measured: true, MaxUtilization: 0.01},
			{Name: "busy", Slices: 1, Running: true, Started: old, Measured: true, MaxUtilization: 0.6},
			{Name: "young", Slices: 1, Running: true, Started: now.Add(-time.Minute), Measured: true},
			{Name: "unmeasured", Slices: 1, Running: true, Started: old},
			{Name: "optout", Slices: 1, Running: true, Started: old, Measured: true, OptOut: true},
			{Name: "pending", Slices: 1, Started: old, Measured: true},
		}},
		want: Decision{Reason: "maxSlices", Idle: []string{"idle", "optout"}, Evict: []string{"idle"}},
	}, {
		name: "opt-out not allowed",
		in: Input{Spec: Spec{Idle: &Idle{BelowUtilization: 0.05, For: Duration{time.Minute}, Action: ActionAnnotate}}, MetricsOK: true, Now: now, Pods: []Pod{
			{Name: "optout", Slices: 1, Running: true, Started: old, Measured: true, OptOut: true},
			{Name: "marked", Slices: 1, Running: true, Started: old, Measured: true, IdleSince: "2027-01-01T00:00:00Z"},
		}},
		want: Decision{Reason: "maxSlices", Idle: []string{"marked", "optout"}, Annotate: []string{"optout"}},
	}, {
		name: "metrics down: keep the last decision, evict nothing",
		in: Input{Spec: Spec{Idle: idleEvict, Budget: &Budget{GPUHours: 1, Window: Duration{time.Hour}}}, MetricsOK: false, Now: now,
			Previous: &Decision{Hard: ptr(2), BudgetExhausted: true, UsedGPUHours: 1.5, Reason: "exhausted", Evict: []string{"x"}},
			Pods:     []Pod{{Name: "idle", Slices: 1, Running: true, Started: old, Measured: true}}},
		want: Decision{Hard: ptr(2), BudgetExhausted: true, UsedGPUHours: 1.5, Reason: "exhausted"},
	}, {
		name: "metrics down from the start: the cap alone",
		in:   Input{Spec: Spec{MaxSlices: ptr(4), Budget: &Budget{GPUHours: 1, Window: Duration{time.Hour}}}, MetricsOK: false, Now: now},
		want: Decision{Hard: ptr(4), Reason: "metrics unavailable; only maxSlices applies"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Decide(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Decide() =\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func TestSpecJSONAndValidate(t *testing.T) {
	var s Spec
	if err := json.Unmarshal([]byte(`{"maxSlices":4,"budget":{"gpuHours":100,"window":"168h","source":"Allocated"},"idle":{"belowUtilization":0.05,"for":"30m","action":"Evict"}}`), &s); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Budget.Window.Duration != 168*time.Hour || s.Idle.For.Duration != 30*time.Minute || *s.MaxSlices != 4 {
		t.Errorf("parsed %+v", s)
	}
	for _, bad := range []string{
		`{"maxSlices":-1}`,
		`{"budget":{"gpuHours":1,"window":"30s"}}`,
		`{"budget":{"gpuHours":1,"window":"1h","source":"Guessed"}}`,
		`{"idle":{"belowUtilization":0,"for":"1h","action":"Evict"}}`,
		`{"idle":{"belowUtilization":0.1,"for":"1s","action":"Evict"}}`,
		`{"idle":{"belowUtilization":0.1,"for":"1h","action":"Delete"}}`,
	} {
		var s Spec
		if err := json.Unmarshal([]byte(bad), &s); err == nil && s.Validate() == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	var d Duration
	if err := json.Unmarshal([]byte(`12`), &d); err == nil {
		t.Error("a number accepted as a duration")
	}
}

func TestQueries(t *testing.T) {
	if q := BudgetQuery(Budget{Window: Duration{24 * time.Hour}}); q != `sum by (namespace) (increase(gpuslice_container_gpu_busy_seconds_total[1d])) / 3600` {
		t.Errorf("busy query %s", q)
	}
	if q := IdleQuery(90 * time.Second); q != `max by (namespace, pod) (max_over_time(gpuslice_container_sm_utilization_ratio[1m30s]))` {
		t.Errorf("idle query %s", q)
	}
}
