package labels

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/kube"
)

// fakeNode is a Node's labels as the API server keeps them: server-side
// apply drops what a manager applied before and no longer applies (unless
// another manager applied it too), a merge patch deletes null values, and
// the next calls can be made to fail.
type fakeNode struct {
	mu      sync.Mutex
	labels  map[string]string
	applied map[string]map[string]bool // by field manager
	writes  int
	fail    []error
}

func newFakeNode(labels map[string]string) *fakeNode {
	return &fakeNode{labels: labels, applied: map[string]map[string]bool{}}
}

func (f *fakeNode) failure() error {
	if len(f.fail) == 0 {
		return nil
	}
	err := f.fail[0]
	f.fail = f.fail[1:]
	return err
}

func (f *fakeNode) Node(context.Context, string) (kube.Meta, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure(); err != nil {
		return kube.Meta{}, err
	}
	m := kube.Meta{Labels: maps.Clone(f.labels)}
	for manager, keys := range f.applied {
		fields := map[string]any{}
		for k := range keys {
			fields["f:"+k] = map[string]any{}
		}
		raw, _ := json.Marshal(map[string]any{"f:metadata": map[string]any{"f:labels": fields}})
		m.ManagedFields = append(m.ManagedFields, kube.ManagedFields{Manager: manager, Operation: "Apply", FieldsV1: raw})
	}
	return m, nil
}

func (f *fakeNode) ApplyNodeLabels(_ context.Context, _ string, labels map[string]string, manager string, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure(); err != nil {
		return err
	}
	f.writes++
	for k := range f.applied[manager] {
		if _, still := labels[k]; still {
			continue
		}
		shared := false
		for m, keys := range f.applied {
			shared = shared || (m != manager && keys[k])
		}
		if !shared {
			delete(f.labels, k)
		}
	}
	f.applied[manager] = map[string]bool{}
	for k, v := range labels {
		f.labels[k] = v
		f.applied[manager][k] = true
	}
	return nil
}

func (f *fakeNode) PatchNode(_ context.Context, _ string, patch any, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure(); err != nil {
		return err
	}
	f.writes++
	for k, v := range patch.(map[string]any)["metadata"].(map[string]any)["labels"].(map[string]any) {
		if v == nil {
			delete(f.labels, k)
		} else {
			f.labels[k] = v.(string)
		}
	}
	return nil
}

// TestSyncAppliesWhatItOwns: the agent's labels are set by server-side
// apply under its own field managers; a label an older agent left is
// removed; labels of others stay; a sync with nothing to change writes
// nothing; and an agent that stops writing GFD's labels leaves them.
func TestSyncAppliesWhatItOwns(t *testing.T) {
	devs, sys, l := node(t, fakegpu.DefaultConfig(), 8)
	desired := For(devs, sys, l, Options{GFD: true, Enforcement: "freezer"})
	f := newFakeNode(map[string]string{"kubernetes.io/hostname": "gpu-node", "gpuslice.io/stale": "yes", "nvidia.com/mig.strategy": "single"})
	w := NewWriter(f, "gpu-node", true, nil)
	if _, err := w.Sync(context.Background(), desired); err != nil {
		t.Fatal(err)
	}
	want := maps.Clone(desired)
	want["kubernetes.io/hostname"], want["nvidia.com/mig.strategy"] = "gpu-node", "single"
	if diff := cmp.Diff(want, f.labels); diff != "" {
		t.Errorf("labels (-want +got)\n%s", diff)
	}
	if !f.applied[FieldManager]["gpuslice.io/slices"] || !f.applied[FieldManagerGFD]["nvidia.com/gpu.count"] || f.applied[FieldManager]["nvidia.com/gpu.count"] {
		t.Errorf("owners: %v", f.applied)
	}
	writes := f.writes
	if n, err := w.Sync(context.Background(), desired); err != nil || n != 0 || f.writes != writes {
		t.Errorf("a sync with nothing to change: %d changed, %d writes, %v", n, f.writes-writes, err)
	}
	off := NewWriter(f, "gpu-node", false, nil)
	if _, err := off.Sync(context.Background(), For(devs, sys, l, Options{GFD: false, Enforcement: "freezer"})); err != nil {
		t.Fatal(err)
	}
	if f.labels["nvidia.com/gpu.count"] == "" || f.labels["gpuslice.io/slices"] == "" {
		t.Errorf("GFD off: %v", f.labels)
	}
}

// TestSyncRetriesWhatMayPass: conflicts and server errors are retried;
// a refusal is not.
func TestSyncRetriesWhatMayPass(t *testing.T) {
	devs, sys, l := node(t, fakegpu.DefaultConfig(), 8)
	desired := For(devs, sys, l, Options{Enforcement: "freezer"})
	f := newFakeNode(map[string]string{})
	f.fail = []error{&kube.APIError{Code: http.StatusConflict}, &kube.APIError{Code: http.StatusServiceUnavailable}}
	w := NewWriter(f, "gpu-node", false, nil)
	w.backoff = time.Millisecond
	if _, err := w.Sync(context.Background(), desired); err != nil || f.labels["gpuslice.io/slices"] == "" {
		t.Errorf("after two passing failures: %v, labels %v", err, f.labels)
	}
	f = newFakeNode(map[string]string{})
	f.fail = []error{&kube.APIError{Code: http.StatusForbidden}, nil}
	w = NewWriter(f, "gpu-node", false, nil)
	w.backoff = time.Millisecond
	if _, err := w.Sync(context.Background(), desired); err == nil || len(f.fail) != 1 {
		t.Errorf("a refusal: %v after %d calls; want one call and the error", err, 2-len(f.fail))
	}
}
