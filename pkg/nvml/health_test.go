package nvml

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestHealthTracker(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	type step struct {
		xid     uint64 // when non-zero, an XID event; otherwise a probe
		lost    bool
		at      time.Duration
		want    Health
		changed bool
	}
	tests := map[string]struct {
		quiet time.Duration
		steps []step
	}{
		"xid then recovery after quiet period": {
			quiet: time.Minute,
			steps: []step{
				{xid: 79, at: 0, changed: true, want: Health{UUID: "g", Reason: ReasonXID, XID: 79}},
				{at: 30 * time.Second},
				{xid: 79, at: 40 * time.Second, changed: true, want: Health{UUID: "g", Reason: ReasonXID, XID: 79}}, // reported again; restarts the quiet period
				{at: 90 * time.Second}, // 50 s after the last XID: still down
				{at: 100 * time.Second, changed: true, want: Health{UUID: "g", Healthy: true, Reason: ReasonRecovered}},
			},
		},
		"xid with quiet zero never recovers": {
			steps: []step{
				{xid: 48, changed: true, want: Health{UUID: "g", Reason: ReasonXID, XID: 48}},
				{at: 24 * time.Hour},
			},
		},
		"application xid is ignored": {
			quiet: time.Minute,
			steps: []step{{xid: 13}, {xid: 31}, {xid: 43}},
		},
		"lost then back": {
			quiet: time.Minute,
			steps: []step{
				{lost: true, changed: true, want: Health{UUID: "g", Reason: ReasonLost}},
				{lost: true, at: time.Second},
				{at: 2 * time.Second, changed: true, want: Health{UUID: "g", Healthy: true, Reason: ReasonRecovered}},
				{at: 3 * time.Second},
			},
		},
		"lost while xid keeps xid reason until quiet": {
			quiet: time.Minute,
			steps: []step{
				{xid: 79, changed: true, want: Health{UUID: "g", Reason: ReasonXID, XID: 79}},
				{lost: true, at: time.Second},
				{at: 2 * time.Second},
				{at: 61 * time.Second, changed: true, want: Health{UUID: "g", Healthy: true, Reason: ReasonRecovered}},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tr := newHealthTracker([]string{"g"}, tc.quiet, DefaultIgnoredXIDs)
			for i, s := range tc.steps {
				var got Health
				var changed bool
				if s.xid != 0 {
					got, changed = tr.xid("g", s.xid, t0.Add(s.at))
				} else {
					got, changed = tr.probe("g", s.lost, t0.Add(s.at))
				}
				if changed != s.changed {
					t.Fatalf("step %d: changed = %v, want %v (health %+v)", i, changed, s.changed, got)
				}
				if diff := cmp.Diff(s.want, got); changed && diff != "" {
					t.Fatalf("step %d (-want +got)\n%s", i, diff)
				}
			}
		})
	}
}

func TestHealthTrackerUnknownGPU(t *testing.T) {
	t.Parallel()
	tr := newHealthTracker([]string{"g"}, time.Minute, nil)
	if _, changed := tr.xid("other", 79, time.Now()); changed {
		t.Error("xid on unknown GPU changed health")
	}
	if _, changed := tr.probe("other", true, time.Now()); changed {
		t.Error("probe of unknown GPU changed health")
	}
	if diff := cmp.Diff([]Health{{UUID: "g", Healthy: true}}, tr.current([]string{"g", "missing"})); diff != "" {
		t.Errorf("current() (-want +got)\n%s", diff)
	}
}

func TestCUDAVersion(t *testing.T) {
	t.Parallel()
	for v, want := range map[int]string{12080: "12.8", 11020: "11.2", 13000: "13.0"} {
		if got := (SystemInfo{CUDADriverVersion: v}).CUDAVersion(); got != want {
			t.Errorf("CUDAVersion(%d) = %q, want %q", v, got, want)
		}
	}
}
