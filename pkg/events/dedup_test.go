package events

import (
	"fmt"
	"testing"
	"time"
)

func TestDedupHoldsRepeatsAndCountsThem(t *testing.T) {
	d := newDedup(time.Minute, 10)
	t0 := time.Unix(1000, 0)
	steps := []struct {
		key       string
		at        time.Duration
		wantSent  bool
		wantCount int
	}{
		{"a", 0, true, 1},
		{"a", 10 * time.Second, false, 0},
		{"b", 11 * time.Second, true, 1}, // another key is not held by a's window
		{"a", 59 * time.Second, false, 0},
		{"a", 61 * time.Second, true, 3}, // itself and the two held back
		{"a", 62 * time.Second, false, 0},
		{"a", 200 * time.Second, true, 2},
	}
	for i, s := range steps {
		count, sent := d.admit(s.key, t0.Add(s.at))
		if sent != s.wantSent || count != s.wantCount {
			t.Errorf("step %d (%s at %v): sent %v count %d, want %v %d", i, s.key, s.at, sent, count, s.wantSent, s.wantCount)
		}
	}
}

// TestDedupIsBounded: a tenant churning pods that each draw an event
// cannot grow the map past its bound, whether the keys' windows have
// passed or not.
func TestDedupIsBounded(t *testing.T) {
	d := newDedup(time.Minute, 100)
	t0 := time.Unix(1000, 0)
	for i := range 10_000 {
		if _, sent := d.admit(fmt.Sprintf("pod-%d/GPUProcessKilled", i), t0.Add(time.Duration(i)*time.Millisecond)); !sent {
			t.Fatalf("a first event for pod %d was held back", i)
		}
		if len(d.last) > 100 || len(d.held) > 100 {
			t.Fatalf("after %d keys the dedup holds %d/%d entries, bound 100", i+1, len(d.last), len(d.held))
		}
	}
	// Expired keys go first: after a quiet minute, one new key leaves one.
	if _, sent := d.admit("late", t0.Add(time.Hour)); !sent || len(d.last) != 1 {
		t.Errorf("after the window passed for every key, %d remembered; want 1", len(d.last))
	}
}
