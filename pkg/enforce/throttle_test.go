package enforce

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	created int
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	c.created++
	if d <= 0 {
		t.c <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	stop := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.timers {
			if x == t {
				c.timers = append(c.timers[:i], c.timers[i+1:]...)
				return true
			}
		}
		return false
	}
	return t.c, stop
}

// set moves the clock to at and fires the timers due.
func (c *fakeClock) set(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = at
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(at) {
			t.c <- at
			continue
		}
		kept = append(kept, t)
	}
	c.timers = kept
}

// settled waits until the throttle has acted and set a timer more than
// after timers in all.
func (c *fakeClock) settled(t *testing.T, after int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		n, waiting := c.created, len(c.timers)
		c.mu.Unlock()
		if n > after && waiting > 0 {
			return n
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("the throttle did not wait on the clock")
	return 0
}

// TestThrottleFollowsPlan drives a throttle by a fake clock: it freezes and
// thaws at the plan's edges, counted from the shared epoch and shifted by
// the plan's offset, takes a new plan at once, counts its frozen time, and
// leaves the cgroup thawed when stopped. No timing of the test machine
// enters the result.
func TestThrottleFollowsPlan(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "freezer.state")
	if err := os.WriteFile(file, []byte("THAWED"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := Freezer{File: file}
	epoch := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := &fakeClock{now: epoch}
	ms := time.Millisecond
	th := StartThrottle(f, Plan{Duty: 0.3, Period: 100 * ms, Offset: 0.5}, epoch, clk)
	defer th.Stop()
	n := clk.settled(t, 0)
	// The run is 50..80 ms of every period.
	for _, step := range []struct {
		at     time.Duration
		frozen bool
	}{{0, true}, {50 * ms, false}, {79 * ms, false}, {80 * ms, true}, {149 * ms, true}, {150 * ms, false}, {180 * ms, true}} {
		if step.at > 0 {
			clk.set(epoch.Add(step.at))
			if step.at != 79*ms && step.at != 149*ms {
				n = clk.settled(t, n)
			}
		}
		if got, err := f.Frozen(); err != nil || got != step.frozen {
			t.Fatalf("at %s: frozen %t (%v), want %t", step.at, got, err, step.frozen)
		}
	}
	// Frozen 0..50 and 80..150 so far.
	if got := th.Throttled(); got != 120*ms {
		t.Errorf("Throttled() = %s, want 120ms", got)
	}
	th.SetPlan(Plan{Duty: 1, Period: 100 * ms})
	clk.settled(t, n)
	if got, _ := f.Frozen(); got {
		t.Error("still frozen after the plan went to duty 1")
	}
	th.Stop()
	if got, _ := f.Frozen(); got {
		t.Error("left frozen after Stop")
	}
}

func TestPlanAt(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	tests := []struct {
		plan  Plan
		since time.Duration
		run   bool
		next  time.Duration
	}{
		{Plan{Duty: 0.3, Period: 100 * ms}, 0, true, 30 * ms},
		{Plan{Duty: 0.3, Period: 100 * ms}, 30 * ms, false, 100 * ms},
		{Plan{Duty: 0.3, Period: 100 * ms}, 1030 * ms, false, 1100 * ms},
		{Plan{Duty: 0.3, Period: 100 * ms, Offset: 0.9}, 95 * ms, true, 120 * ms},
		{Plan{Duty: 0.3, Period: 100 * ms, Offset: 0.9}, 125 * ms, false, 190 * ms},
		{Plan{Duty: 1, Period: 100 * ms, Offset: 0.4}, 7 * ms, true, 107 * ms},
	}
	for _, tc := range tests {
		run, next := tc.plan.At(tc.since)
		if run != tc.run || next != tc.next {
			t.Errorf("%+v at %s: run %t until %s, want %t until %s", tc.plan, tc.since, run, next, tc.run, tc.next)
		}
	}
}
