package enforce

import (
	"math"
	"testing"
	"time"
)

func TestTurnShares(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		members []Member
		want    map[string]float64
	}{
		"strict keep their limits, the rest idles": {
			[]Member{{Key: "a", Limit: 0.25, Policy: Strict}, {Key: "b", Limit: 0.5, Policy: Strict}},
			map[string]float64{"a": 0.25, "b": 0.5},
		},
		"burst fill the period in proportion to limits": {
			[]Member{{Key: "a", Limit: 0.25, Policy: Burst}, {Key: "b", Limit: 0.5, Policy: Burst}},
			map[string]float64{"a": 1.0 / 3, "b": 2.0 / 3},
		},
		"burst take what strict leave": {
			[]Member{{Key: "a", Limit: 0.25, Policy: Strict}, {Key: "b", Limit: 0.25, Policy: Burst}, {Key: "c", Limit: 0.25, Policy: Burst}},
			map[string]float64{"a": 0.25, "b": 0.375, "c": 0.375},
		},
		"one burst member alone has it all": {
			[]Member{{Key: "a", Limit: 0.25, Policy: Burst}},
			map[string]float64{"a": 1},
		},
		"one strict member alone keeps its limit": {
			[]Member{{Key: "a", Limit: 0.25, Policy: Strict}},
			map[string]float64{"a": 0.25},
		},
	} {
		got := Shares(tc.members)
		for k, w := range tc.want {
			if math.Abs(got[k]-w) > 1e-9 {
				t.Errorf("%s: %s's share %.4f, want %.4f", name, k, got[k], w)
			}
		}
	}
}

// runs reports, for each instant of one period sampled every step, which
// members run.
func runsAt(plans map[string]Plan, at time.Duration) []string {
	var out []string
	for k, p := range plans {
		if run, _ := p.At(at); run {
			out = append(out, k)
		}
	}
	return out
}

// No two members run at once, and each runs its share of the period: the
// property the turns hold compute by.
func TestTurnsNeverOverlap(t *testing.T) {
	t.Parallel()
	turns := NewTurns(100 * time.Millisecond)
	for name, members := range map[string][]Member{
		"strict 10/30/50":   {{Key: "a", Limit: 0.1, Policy: Strict}, {Key: "b", Limit: 0.3, Policy: Strict}, {Key: "c", Limit: 0.5, Policy: Strict}},
		"burst 10/10/30/50": {{Key: "a", Limit: 0.1}, {Key: "b", Limit: 0.1}, {Key: "c", Limit: 0.3}, {Key: "d", Limit: 0.5}},
		"mixed":             {{Key: "a", Limit: 0.2, Policy: Strict}, {Key: "b", Limit: 0.2, Policy: Burst}},
	} {
		plans := turns.Plans(members)
		period := plans["a"].Period
		shares := Shares(members)
		ran := map[string]time.Duration{}
		step := period / 1000
		for at := time.Duration(0); at < 3*period; at += step {
			r := runsAt(plans, at)
			if len(r) > 1 {
				t.Fatalf("%s: %v run at once at %s", name, r, at)
			}
			for _, k := range r {
				ran[k] += step
			}
		}
		for _, m := range members {
			if got := float64(ran[m.Key]) / float64(3*period); math.Abs(got-shares[m.Key]) > 0.005 {
				t.Errorf("%s: %s ran %.4f of the time, want %.4f", name, m.Key, got, shares[m.Key])
			}
		}
	}
}

func TestTurnsPeriod(t *testing.T) {
	t.Parallel()
	turns := NewTurns(100 * time.Millisecond)
	// The shortest turn, 10 %, lasts MinTurn: a 2 s period.
	p := turns.Plans([]Member{{Key: "a", Limit: 0.1, Policy: Strict}, {Key: "b", Limit: 0.9, Policy: Strict}})
	if p["a"].Period != 2*time.Second || p["b"].Period != 2*time.Second {
		t.Errorf("periods %s and %s, want 2s", p["a"].Period, p["b"].Period)
	}
	// A share so small its turn would need more than MaxPeriod gets
	// MaxPeriod.
	p = turns.Plans([]Member{{Key: "a", Limit: 0.02, Policy: Strict}, {Key: "b", Limit: 0.5, Policy: Strict}})
	if p["a"].Period != turns.MaxPeriod {
		t.Errorf("period %s, want the longest, %s", p["a"].Period, turns.MaxPeriod)
	}
	// Never shorter than the base period.
	p = turns.Plans([]Member{{Key: "a", Limit: 0.5, Policy: Strict}, {Key: "b", Limit: 0.5, Policy: Strict}})
	if p["a"].Period != 400*time.Millisecond {
		t.Errorf("period %s, want 400ms", p["a"].Period)
	}
	// A burst member alone runs unthrottled.
	if p := turns.Plans([]Member{{Key: "a", Limit: 0.3}}); p["a"].Duty != 1 {
		t.Errorf("a lone burst member's duty %.2f, want 1", p["a"].Duty)
	}
}
