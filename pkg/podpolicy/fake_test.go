package podpolicy

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/kube"
)

// pods is a node's pods as the API server lists them, or its failure.
type pods struct {
	list []kube.Meta
	err  error
}

func (p *pods) PodsOnNode(context.Context, string) ([]kube.Meta, error) { return p.list, p.err }

// TestLastKnownPoliciesSurviveAnOutage: a list that fails keeps what was
// known (a pod that chose strict stays strict while the API server is
// away), and a bad annotation is no policy.
func TestLastKnownPoliciesSurviveAnOutage(t *testing.T) {
	p := &pods{list: []kube.Meta{
		{Namespace: "ml", Name: "a", Annotations: map[string]string{Annotation: "strict"}},
		{Namespace: "ml", Name: "b", Annotations: map[string]string{Annotation: "STRICT!"}},
		{Namespace: "ml", Name: "c"},
	}}
	w := New(p, "gpu-node", 0, nil)
	if err := w.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if w.Policy("ml", "a") != enforce.Strict || w.Policy("ml", "b") != "" || w.Policy("ml", "c") != "" {
			t.Errorf("%s: a=%q b=%q c=%q", when, w.Policy("ml", "a"), w.Policy("ml", "b"), w.Policy("ml", "c"))
		}
	}
	check("listed")
	p.err = errors.New("connection refused")
	if err := w.Refresh(context.Background()); err == nil {
		t.Error("a failed list was not reported")
	}
	check("during the outage")
	p.err, p.list = nil, nil
	if err := w.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w.Policy("ml", "a") != "" {
		t.Error("a deleted pod's policy is still known")
	}
}

// closingStream is an API server (or a proxy before it) that answers every
// watch with an empty stream at once: a lying dependency.
type closingStream struct {
	lists, watches atomic.Int64
}

func (s *closingStream) PodsOnNode(context.Context, string) ([]kube.Meta, error) { return nil, nil }
func (s *closingStream) ListPodsOnNode(context.Context, string) ([]kube.Meta, string, error) {
	s.lists.Add(1)
	return nil, "1", nil
}
func (s *closingStream) WatchPodsOnNode(context.Context, string, string, func(kube.WatchEvent)) (string, error) {
	s.watches.Add(1)
	return "1", nil
}

// TestWatchesThatEndAtOnceAreNotAHotLoop: watches that end the moment
// they start are retried with backoff, not in a loop that floods the API
// server.
func TestWatchesThatEndAtOnceAreNotAHotLoop(t *testing.T) {
	s := &closingStream{}
	w := New(s, "gpu-node", time.Second, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	w.Run(ctx)
	if n := s.watches.Load() + s.lists.Load(); n > 10 {
		t.Errorf("%d requests in 1.5 s against watches that end at once", n)
	}
}
