package podpolicy

import (
	"context"
	"errors"
	"testing"

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
