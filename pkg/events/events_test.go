package events

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/kube"
)

// sink records the events posted to it; with hang set, a post waits for
// its context to end, as against an API server that never answers.
type sink struct {
	mu     sync.Mutex
	posted []kube.Event
	tried  int
	hang   bool
}

func (s *sink) PostEvent(ctx context.Context, e kube.Event) error {
	s.mu.Lock()
	s.tried++
	s.mu.Unlock()
	if s.hang {
		<-ctx.Done()
		return ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.posted = append(s.posted, e)
	return nil
}

// TestRepeatsAreFolded: one event per pod and reason within the window,
// each pod's own, from this node.
func TestRepeatsAreFolded(t *testing.T) {
	s := &sink{}
	k := New(s, "gpu-node", nil)
	for range 5 {
		k.Warning(Pod{Namespace: "ml", Name: "a", UID: "uid-a"}, "GPUMemoryLimitExceeded", "over")
	}
	k.Normal(Pod{Namespace: "ml", Name: "b", UID: "uid-b"}, "GPUComputeThrottled", "throttled")
	k.Stop()
	if len(s.posted) != 2 {
		t.Fatalf("posted %d events, want 2: %+v", len(s.posted), s.posted)
	}
	for _, e := range s.posted {
		if e.Host != "gpu-node" || e.Component != Component || e.Namespace != "ml" {
			t.Errorf("event %+v", e)
		}
	}
	k.Warning(Pod{Namespace: "ml", Name: "c"}, "Late", "after Stop")
	if len(s.posted) != 2 {
		t.Error("an event recorded after Stop was posted")
	}
}

// TestHangingAPIServerHoldsNothing: recording never blocks the caller (the
// enforcer), whatever the API server does, and Stop returns within its
// grace even with a full queue of posts that would each wait 10 s.
func TestHangingAPIServerHoldsNothing(t *testing.T) {
	s := &sink{hang: true}
	k := New(s, "gpu-node", nil)
	k.grace = 200 * time.Millisecond
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		for i := range 1000 {
			k.Warning(Pod{Namespace: "ml", Name: fmt.Sprintf("p%d", i), UID: fmt.Sprint(i)}, "GPUMemoryLimitExceeded", "over")
		}
	}()
	select {
	case <-recorded:
	case <-time.After(30 * time.Second):
		t.Fatal("recording blocked on an API server that does not answer")
	}
	stopped := make(chan struct{})
	go func() { k.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("Stop waited on an API server that does not answer")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tried > 2 {
		t.Errorf("%d posts tried after the grace, want the one in flight at most", s.tried)
	}
}
