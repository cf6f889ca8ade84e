package labels

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

func labelsOf(t *testing.T, c kubernetes.Interface, node string) map[string]string {
	t.Helper()
	n, err := c.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n.Labels
}

func TestWriterAgainstAPIServer(t *testing.T) {
	srv := apiserver.Start(t)
	c, k := srv.Clientset(t), srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for name, l := range map[string]map[string]string{
		"gpu-node":   {"kubernetes.io/hostname": "gpu-node", "nvidia.com/mig.strategy": "single", "gpuslice.io/stale": "yes"},
		"other-node": {"kubernetes.io/hostname": "other-node", "gpuslice.io/slices": "99", "nvidia.com/gpu.count": "8"},
	} {
		if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	other := labelsOf(t, c, "other-node")

	devs, sys, l := node(t, fakegpu.DefaultConfig(), 8)
	desired := For(devs, sys, l, Options{GFD: true, Enforcement: "freezer"})
	w := NewWriter(k, "gpu-node", true, nil)
	if _, err := w.Sync(ctx, desired); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"kubernetes.io/hostname": "gpu-node", "nvidia.com/mig.strategy": "single"}
	for k, v := range desired {
		want[k] = v
	}
	if diff := cmp.Diff(want, labelsOf(t, c, "gpu-node")); diff != "" {
		t.Errorf("labels after the first sync (-want +got)\n%s", diff)
	}
	if n, err := w.Sync(ctx, desired); err != nil || n != 0 {
		t.Errorf("second sync changed %d labels, %v; want none", n, err)
	}
	// Server-side apply: the node's managed fields name the agent as the
	// owner of its labels, and GFD's under their own manager.
	n, err := c.CoreV1().Nodes().Get(ctx, "gpu-node", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	applied := map[string]bool{}
	for _, mf := range n.ManagedFields {
		if mf.Operation == metav1.ManagedFieldsOperationApply {
			applied[mf.Manager] = true
		}
	}
	if !applied[FieldManager] || !applied[FieldManagerGFD] {
		t.Errorf("managers that applied: %v, want %s and %s", applied, FieldManager, FieldManagerGFD)
	}

	// The GPUs change (one is gone): the labels follow.
	devs3, sys3, l3 := node(t, fakegpu.PresetConfig("A100-40GB", 3), 8)
	desired3 := For(devs3, sys3, l3, Options{GFD: true, Enforcement: "freezer"})
	if _, err := w.Sync(ctx, desired3); err != nil {
		t.Fatal(err)
	}
	got := labelsOf(t, c, "gpu-node")
	if got["nvidia.com/gpu.count"] != "3" || got["gpuslice.io/slices"] != "24" || got["nvidia.com/mig.strategy"] != "single" {
		t.Errorf("labels after the GPUs changed: %v", got)
	}
	if diff := cmp.Diff(other, labelsOf(t, c, "other-node")); diff != "" {
		t.Errorf("another node was touched (-before +after)\n%s", diff)
	}

	// With GFD off, GFD's labels stay whatever GFD wrote.
	gfdOff := NewWriter(k, "gpu-node", false, nil)
	if _, err := gfdOff.Sync(ctx, For(devs3, sys3, l3, Options{GFD: false})); err != nil {
		t.Fatal(err)
	}
	if got := labelsOf(t, c, "gpu-node"); got["nvidia.com/gpu.count"] != "3" || got["gpuslice.io/enforcement"] != "" {
		t.Errorf("GFD off: %v", got)
	}

	// A missing node is an error to report, not to retry.
	if _, err := NewWriter(k, "no-such-node", true, nil).Sync(ctx, desired); !kube.IsNotFound(err) {
		t.Errorf("Sync of a missing node = %v, want NotFound", err)
	}
}

// Keep applies the labels, puts back one an operator removes at its next
// round, waits for a Node that is not registered yet, and returns when its
// context ends.
func TestKeepRepairsAndWaits(t *testing.T) {
	srv := apiserver.Start(t)
	c, k := srv.Clientset(t), srv.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	devs, sys, l := node(t, fakegpu.DefaultConfig(), 8)
	desired := For(devs, sys, l, Options{GFD: true})
	w := NewWriter(k, "late-node", true, nil)
	w.resync, w.retry = 300*time.Millisecond, 50*time.Millisecond
	done := make(chan struct{})
	go func() { defer close(done); w.Keep(ctx, desired) }()
	// The Node registers after Keep started.
	time.Sleep(200 * time.Millisecond)
	if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "late-node"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitLabel := func(want string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for labelsOf(t, c, "late-node")["gpuslice.io/slices"] != want {
			if time.Now().After(deadline) {
				t.Fatalf("gpuslice.io/slices = %q, want %q", labelsOf(t, c, "late-node")["gpuslice.io/slices"], want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitLabel("32")
	// An operator removes the label, retrying as kubectl would when the
	// writer's own applies (its labels, then GFD's) land in between.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := c.CoreV1().Nodes().Get(ctx, "late-node", metav1.GetOptions{})
		if err != nil {
			return err
		}
		delete(n.Labels, "gpuslice.io/slices")
		_, err = c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	waitLabel("32")
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Keep did not return when its context ended")
	}
}
