package quota

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

func ptr(v int64) *int64 { return &v }

var now = time.Unix(1_800_000_000, 0)

// ev is full, valid evidence of a pod's use peaking at peak.
func ev(peak float64) *PodEvidence {
	return &PodEvidence{Max: peak, Samples: 1000, Valid: true, Instances: []string{"node-a:9445"}}
}

func TestDecide(t *testing.T) {
	idleEvict := &Idle{BelowUtilization: 0.05, For: Duration{Duration: 10 * time.Minute}, Action: ActionEvict, AllowOptOut: true}
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
		in:   Input{Spec: Spec{MaxSlices: ptr(8), Budget: &Budget{GPUHours: 10, Window: Duration{Duration: 24 * time.Hour}}}, MetricsOK: true, UsedSlices: 3, UsedGPUHours: 9.9, Now: now},
		want: Decision{Hard: ptr(8), UsedGPUHours: 9.9, Reason: "maxSlices", Measured: true},
	}, {
		name: "budget exhausted: limit lowered to what is held",
		in:   Input{Spec: Spec{MaxSlices: ptr(8), Budget: &Budget{GPUHours: 10, Window: Duration{Duration: 24 * time.Hour}}}, MetricsOK: true, UsedSlices: 3, UsedGPUHours: 10, Now: now},
		want: Decision{Hard: ptr(3), BudgetExhausted: true, UsedGPUHours: 10, Reason: "GPU-hour budget exhausted: 10.00 of 10.00 used over 24h0m0s", Measured: true},
	}, {
		name: "budget exhausted without a cap",
		in:   Input{Spec: Spec{Budget: &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}}, MetricsOK: true, UsedSlices: 0, UsedGPUHours: 2, Now: now},
		want: Decision{Hard: ptr(0), BudgetExhausted: true, UsedGPUHours: 2, Reason: "GPU-hour budget exhausted: 2.00 of 1.00 used over 1h0m0s", Measured: true},
	}, {
		// Kueue's AdmissionCheck holds new Workloads back; a ResourceQuota
		// at what is held stops pods that do not come through Kueue.
		name: "budget exhausted under Kueue",
		in:   Input{Spec: Spec{Admission: AdmissionKueue, Budget: &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}}, MetricsOK: true, UsedSlices: 3, UsedGPUHours: 2, Now: now},
		want: Decision{Hard: ptr(3), BudgetExhausted: true, UsedGPUHours: 2, Reason: "GPU-hour budget exhausted: 2.00 of 1.00 used over 1h0m0s; new Workloads wait in Kueue, and the ResourceQuota stops pods that bypass it", Measured: true},
	}, {
		// With room, Kueue's ClusterQueues cap: no ResourceQuota.
		name: "budget left under Kueue",
		in:   Input{Spec: Spec{Admission: AdmissionKueue, Budget: &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}}, MetricsOK: true, UsedSlices: 3, UsedGPUHours: 0.5, Now: now},
		want: Decision{UsedGPUHours: 0.5, Reason: "maxSlices", Measured: true},
	}, {
		name: "no cap, no budget: no ResourceQuota",
		in:   Input{Spec: Spec{Idle: idleEvict}, MetricsOK: true, Now: now},
		want: Decision{Reason: "maxSlices"},
	}, {
		name: "idle: evict the idle, spare the busy, the young, the unmeasured and the opted out",
		in: Input{Spec: Spec{Idle: idleEvict}, MetricsOK: true, Now: now, Pods: []Pod{
			{Name: "idle", Slices: 1, Running: true, Started: old, Evidence: ev(0.01)},
			{Name: "busy", Slices: 1, Running: true, Started: old, Evidence: ev(0.6)},
			{Name: "young", Slices: 1, Running: true, Started: now.Add(-time.Minute), Evidence: ev(0)},
			{Name: "unmeasured", Slices: 1, Running: true, Started: old},
			{Name: "optout", Slices: 1, Running: true, Started: old, Evidence: ev(0), OptOut: true},
			{Name: "pending", Slices: 1, Started: old, Evidence: ev(0)},
		}},
		want: Decision{Reason: "maxSlices", Idle: []string{"idle", "optout"}, Evict: []string{"idle"},
			Unknown: []string{"unmeasured: no samples of its GPU use in Prometheus over the window"}},
	}, {
		// The attacks on idleness: a Prometheus restarted without storage
		// (a busy pod paused 20 s has 1 sample of 0 in a 10 min window), a
		// -1 or NaN sample, an agent that was blind or down. Never idle.
		name: "idle only on positive evidence",
		in: Input{Spec: Spec{Idle: idleEvict}, MetricsOK: true, Now: now, ScrapeInterval: 30 * time.Second, Pods: []Pod{
			{Name: "fresh-prometheus", Slices: 1, Running: true, Started: old, Evidence: &PodEvidence{Max: 0, Samples: 1, Valid: true}},
			{Name: "almost-covered", Slices: 1, Running: true, Started: old, Evidence: &PodEvidence{Max: 0, Samples: 17, Valid: true}},
			{Name: "covered", Slices: 1, Running: true, Started: old, Evidence: &PodEvidence{Max: 0, Samples: 18, Valid: true}},
			{Name: "negative", Slices: 1, Running: true, Started: old, Evidence: &PodEvidence{Max: 0, Samples: 20, Valid: false}},
			{Name: "blind-agent", Slices: 1, Running: true, Started: old, Evidence: ev(0), AgentBlind: true},
		}},
		want: Decision{Reason: "maxSlices", Idle: []string{"covered"}, Evict: []string{"covered"}, Unknown: []string{
			"almost-covered: only 17 of the 18 samples the window needs",
			"blind-agent: an agent reporting it was down or could not read a GPU during the window",
			"fresh-prometheus: only 1 of the 18 samples the window needs",
			"negative: a sample of its GPU use was not a number in [0, 1]",
		}},
	}, {
		name: "invalid GPU-hours: the budget keeps its last state",
		in: Input{Spec: Spec{MaxSlices: ptr(8), Budget: &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}}, MetricsOK: true, HoursInvalid: true, UsedGPUHours: 0, Now: now,
			Previous: &Decision{Hard: ptr(2), BudgetExhausted: true, UsedGPUHours: 1.5, Reason: "exhausted"}},
		want: Decision{Hard: ptr(2), BudgetExhausted: true, UsedGPUHours: 1.5, Reason: "exhausted"},
	}, {
		name: "invalid GPU-hours from the start: the cap alone",
		in:   Input{Spec: Spec{MaxSlices: ptr(8), Budget: &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}}, MetricsOK: true, HoursInvalid: true, Now: now},
		want: Decision{Hard: ptr(8), Reason: "GPU-hours unknown (invalid samples); maxSlices only"},
	}, {
		name: "opt-out not allowed",
		in: Input{Spec: Spec{Idle: &Idle{BelowUtilization: 0.05, For: Duration{Duration: time.Minute}, Action: ActionAnnotate}}, MetricsOK: true, Now: now, Pods: []Pod{
			{Name: "optout", Slices: 1, Running: true, Started: old, Evidence: ev(0), OptOut: true},
			{Name: "marked", Slices: 1, Running: true, Started: old, Evidence: ev(0), IdleSince: "2027-01-01T00:00:00Z"},
		}},
		want: Decision{Reason: "maxSlices", Idle: []string{"marked", "optout"}, Annotate: []string{"optout"}},
	}, {
		name: "metrics down: keep the last decision, evict nothing",
		in: Input{Spec: Spec{Idle: idleEvict, Budget: &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}}, MetricsOK: false, Now: now,
			Previous: &Decision{Hard: ptr(2), BudgetExhausted: true, UsedGPUHours: 1.5, Reason: "exhausted", Evict: []string{"x"}},
			Pods:     []Pod{{Name: "idle", Slices: 1, Running: true, Started: old, Evidence: ev(0)}}},
		want: Decision{Hard: ptr(2), BudgetExhausted: true, UsedGPUHours: 1.5, Reason: "exhausted"},
	}, {
		name: "metrics down from the start: the cap alone",
		in:   Input{Spec: Spec{MaxSlices: ptr(4), Budget: &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}}, MetricsOK: false, Now: now},
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
	busy := `sum by (namespace, gpu_fraction) (increase(gpuslice_container_gpu_busy_seconds_total[1d])) / 3600`
	unmeasured := `sum by (namespace, gpu_fraction) (sum_over_time((gpuslice_container_compute_limit_ratio * (gpuslice_container_compute_unmeasured == 1))[1d:15s])) * 15 / 3600`
	if q := BudgetQuery(Budget{Window: Duration{Duration: 24 * time.Hour}}, ""); q != "("+busy+" + "+unmeasured+") or "+busy+" or "+unmeasured {
		t.Errorf("busy query %s", q)
	}
	maxQ, _, sumQ, countQ := IdleQueries(90*time.Second, "")
	if maxQ != `max by (namespace, pod, instance) (max_over_time(gpuslice_container_sm_utilization_ratio[1m30s]))` ||
		sumQ != `sum by (namespace, pod, instance) (sum_over_time(gpuslice_container_sm_utilization_ratio[1m30s]))` ||
		countQ != `min by (namespace, pod, instance) (count_over_time(gpuslice_container_sm_utilization_ratio[1m30s]))` {
		t.Errorf("idle queries %s, %s, %s", maxQ, sumQ, countQ)
	}
	// The believed series only.
	if q := BudgetQuery(Budget{Window: Duration{Duration: time.Hour}}, DefaultSeries); !strings.HasPrefix(q, `(sum by (namespace, gpu_fraction) (increase(gpuslice_container_gpu_busy_seconds_total{gpuslice_scrape_namespace="gpuslice-system"}[1h])) / 3600 + `) ||
		!strings.Contains(q, `gpuslice_container_compute_unmeasured{gpuslice_scrape_namespace="gpuslice-system"} == 1`) {
		t.Errorf("busy query %s", q)
	}
	if q := BlindQuery(time.Minute, DefaultSeries); q != `max by (instance) (max_over_time(gpuslice_agent_gpu_blind{gpuslice_scrape_namespace="gpuslice-system"}[1m])) > 0 or min by (instance) (min_over_time(up{gpuslice_scrape_namespace="gpuslice-system",instance=~".+"}[1m])) == 0` {
		t.Errorf("blind query %s", q)
	}
}

// A budget's answer comes in groups by the share of its GPU each device
// stands for: a MIG instance's groups are weighted by it, a whole GPU's
// (no label) count whole, and a label that is no share never lowers a
// charge.
func TestGPUHoursByNamespace(t *testing.T) {
	t.Parallel()
	sample := func(ns, fraction string, v float64) *model.Sample {
		m := model.Metric{"namespace": model.LabelValue(ns)}
		if fraction != "" {
			m["gpu_fraction"] = model.LabelValue(fraction)
		}
		return &model.Sample{Metric: m, Value: model.SampleValue(v)}
	}
	hours, bad := GPUHoursByNamespace(model.Vector{
		sample("ml", "", 2), sample("ml", "0.125", 8), sample("ml", "0.5", 1),
		sample("mig", "0.125", 16),
		sample("forged", "0", 4), sample("forged", "7", 1), sample("forged", "x", 1),
		sample("broken", "", 1), sample("broken", "0.5", math.NaN()),
	})
	for ns, want := range map[string]float64{"ml": 2 + 1 + 0.5, "mig": 2, "forged": 6} {
		if math.Abs(hours[ns]-want) > 1e-9 {
			t.Errorf("%s: %.3f GPU-hours, want %.3f", ns, hours[ns], want)
		}
	}
	if _, ok := hours["broken"]; ok || !bad["broken"] || len(bad) != 1 {
		t.Errorf("hours %v, bad %v: want broken alone bad, and no hours for it", hours, bad)
	}
}

func TestSeriesValidate(t *testing.T) {
	for s, ok := range map[Series]bool{
		"": true, DefaultSeries: true, `job="gpuslice-agent", gpuslice_scrape_namespace=~"gpu.*"`: true, `a="x\"y"`: true,
		`job=gpuslice`: false, `{job="a"}`: false, `job="a"} or vector(1) or up{`: false, `1a="x"`: false,
	} {
		if err := s.Validate(); (err == nil) != ok {
			t.Errorf("Validate(%q) = %v, want ok %t", s, err, ok)
		}
	}
}

// TestDecideMeasured: a budget's use counts as measured only when read
// from Prometheus, this cycle or the last decision kept through an outage
// or invalid samples; with nothing read it is not, so whatever admits
// against the budget (the Kueue check) never takes unknown use for room.
func TestDecideMeasured(t *testing.T) {
	spec := Spec{Budget: &Budget{GPUHours: 1, Window: Duration{Duration: time.Hour}}}
	measured := Decide(Input{Spec: spec, MetricsOK: true, UsedGPUHours: 0.5})
	for _, tc := range []struct {
		name string
		in   Input
		want bool
	}{
		{"read", Input{Spec: spec, MetricsOK: true, UsedGPUHours: 0.5}, true},
		{"outage, nothing read before", Input{Spec: spec}, false},
		{"outage after a reading", Input{Spec: spec, Previous: &measured}, true},
		{"invalid samples, nothing read before", Input{Spec: spec, MetricsOK: true, HoursInvalid: true}, false},
		{"invalid samples after a reading", Input{Spec: spec, MetricsOK: true, HoursInvalid: true, Previous: &measured}, true},
		{"no budget", Input{MetricsOK: true}, false},
	} {
		if got := Decide(tc.in).Measured; got != tc.want {
			t.Errorf("%s: Measured %t, want %t", tc.name, got, tc.want)
		}
	}
}
