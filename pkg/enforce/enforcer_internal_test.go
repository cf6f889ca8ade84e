package enforce

import (
	"context"
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
