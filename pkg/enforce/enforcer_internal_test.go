package enforce

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/node"
)

func newBareEnforcer(t *testing.T) *Enforcer {
	t.Helper()
	o := DefaultOptions()
	o.CgroupRoot, o.ProcRoot = t.TempDir(), t.TempDir()
	o.State = StateFile{Path: filepath.Join(t.TempDir(), "state.json")}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// A scrape never waits on an enforcement round: with the enforcer's lock
// held (as Apply holds it across kills, /proc reads, NVML calls and file
// writes), every reader the exporter uses still answers at once.
func TestReadersNeverWaitOnEnforcement(t *testing.T) {
	t.Parallel()
	e := newBareEnforcer(t)
	e.mu.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.Stats()
		_ = e.Failures()
		_, _ = e.Tiers()
		_ = e.UnauthorizedStats()
		_, _ = e.DriverStats()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("a reader waited on the enforcer's lock")
	}
	e.mu.Unlock()
	<-done
}

// Offer never blocks, and a loop that falls behind applies only the latest
// snapshot.
func TestOfferLatestWins(t *testing.T) {
	t.Parallel()
	e := newBareEnforcer(t)
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		e.Offer(&node.Snapshot{Time: t0.Add(time.Duration(i) * time.Second)}) // no loop yet: never blocks
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.mu.Lock()
		last := e.last
		e.mu.Unlock()
		if !last.IsZero() {
			if want := t0.Add(2 * time.Second); !last.Equal(want) {
				t.Errorf("applied %s, want only the latest, %s", last, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the loop applied nothing")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// With MPS the compute throttle is off whatever Compute says (MPS limits
// set at Allocate hold compute, and a throttle would fight them), and the
// tier says so; the driver tier is only tried for a killing memory policy.
func TestTierRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		mps, compute  bool
		memory        MemoryPolicy
		wantCompute   string
		wantMemory    string
		wantThrottles bool
	}{
		{"default", false, true, MemoryKill, "freezer", "watchdog", true},
		{"mps", true, true, MemoryKill, "mps", "watchdog", false},
		{"compute off", false, false, MemoryLog, "none", "watchdog", false},
		{"nothing", false, false, MemoryOff, "none", "none", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			o.CgroupRoot, o.ProcRoot = t.TempDir(), t.TempDir()
			o.State = StateFile{Path: filepath.Join(t.TempDir(), "state.json")}
			o.MPS, o.Compute, o.Memory = tc.mps, tc.compute, tc.memory
			e, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if c, m := e.Tiers(); c != tc.wantCompute || m != tc.wantMemory {
				t.Errorf("Tiers() = %s, %s; want %s, %s", c, m, tc.wantCompute, tc.wantMemory)
			}
			if e.opts.Compute != tc.wantThrottles {
				t.Errorf("throttle on = %t, want %t", e.opts.Compute, tc.wantThrottles)
			}
		})
	}
	for _, memory := range []MemoryPolicy{MemoryLog, MemoryOff} {
		o := DefaultOptions()
		o.DriverMemoryLimits, o.Memory = true, memory
		if _, err := NewDriverTier(o, DriverOptions{}); !errors.Is(err, ErrDriverTierOff) {
			t.Errorf("driver tier with memory policy %s: %v, want ErrDriverTierOff", memory, err)
		}
	}
	o := DefaultOptions()
	if _, err := NewDriverTier(o, DriverOptions{}); !errors.Is(err, ErrDriverTierOff) {
		t.Errorf("driver tier not asked for: %v, want ErrDriverTierOff", err)
	}
}
