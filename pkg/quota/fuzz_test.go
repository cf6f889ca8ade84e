package quota

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzSpecDecide parses GPUQuota specs as the controller does (users write
// them) and decides with them: no panic, and a valid spec's decision keeps
// its promises.
func FuzzSpecDecide(f *testing.F) {
	f.Add([]byte(`{"maxSlices":4,"budget":{"gpuHours":1,"window":"1h"},"idle":{"belowUtilization":0.05,"for":"15s","action":"Evict"}}`), int64(3), 2.0, true)
	f.Add([]byte(`{"budget":{"gpuHours":0,"window":"1m","source":"Allocated"}}`), int64(0), 0.0, false)
	f.Add([]byte(`{"idle":{"belowUtilization":1,"for":"1h","action":"Annotate","allowOptOut":true}}`), int64(9), 0.5, true)
	f.Fuzz(func(t *testing.T, data []byte, used int64, hours float64, metricsOK bool) {
		var s Spec
		if json.Unmarshal(data, &s) != nil || s.Validate() != nil || used < 0 {
			return
		}
		d := Decide(Input{Spec: s, UsedSlices: used, UsedGPUHours: hours, MetricsOK: metricsOK, Now: time.Unix(1e9, 0), ScrapeInterval: 15 * time.Second,
			Pods: []Pod{
				{Name: "p", Slices: 1, Running: true, Started: time.Unix(0, 0), Evidence: &PodEvidence{Samples: 1 << 30, Valid: true}},
				{Name: "partial", Slices: 1, Running: true, Started: time.Unix(0, 0), Evidence: &PodEvidence{Samples: 1, Valid: true}},
				{Name: "invalid", Slices: 1, Running: true, Started: time.Unix(0, 0), Evidence: &PodEvidence{Samples: 1 << 30}},
				{Name: "none", Slices: 1, Running: true, Started: time.Unix(0, 0)},
			}})
		for _, name := range append(append(d.Idle, d.Evict...), d.Annotate...) {
			if name != "p" {
				t.Errorf("%s reclaimed without the evidence: %+v", name, d)
			}
		}
		if d.Hard != nil && s.MaxSlices != nil && *d.Hard > *s.MaxSlices {
			t.Errorf("limit %d above maxSlices %d", *d.Hard, *s.MaxSlices)
		}
		if d.BudgetExhausted && (d.Hard == nil || *d.Hard > used) {
			t.Errorf("budget exhausted but the limit %v lets the namespace grow past %d", d.Hard, used)
		}
		if !metricsOK && (len(d.Evict) > 0 || len(d.Annotate) > 0) {
			t.Error("acted on idleness without metrics")
		}
	})
}
