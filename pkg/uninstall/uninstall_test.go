package uninstall

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/kube"
)

// cluster is a working in-memory stand-in for the API server: a DaemonSet
// that a garbage collector removes some polls after its foreground
// deletion, and nodes whose labels take JSON merge patches.
type cluster struct {
	dsExists       bool
	deleting       bool
	pollsToGone    int
	nodes          map[string]map[string]string
	patchErr       error
	patchedWhileDS bool
	// The DRA driver's DaemonSet (named "...-dra-driver") and slices.
	draExists, draDeleting bool
	draPolls               int
	slices                 map[string]int // by driver
	slicesWhileDriver      bool
}

func isDRA(name string) bool { return strings.HasSuffix(name, "-dra-driver") }

func (c *cluster) DeleteDaemonSet(_ context.Context, _, name string) error {
	if isDRA(name) {
		c.draDeleting = c.draExists
		return nil
	}
	if c.dsExists {
		c.deleting = true
	}
	return nil
}

func (c *cluster) DaemonSetExists(_ context.Context, _, name string) (bool, error) {
	if isDRA(name) {
		if c.draDeleting {
			if c.draPolls--; c.draPolls <= 0 {
				c.draExists, c.draDeleting = false, false
			}
		}
		return c.draExists, nil
	}
	if c.deleting {
		if c.pollsToGone--; c.pollsToGone <= 0 {
			c.dsExists, c.deleting = false, false
		}
	}
	return c.dsExists, nil
}

func (c *cluster) DeleteResourceSlices(_ context.Context, driver string) error {
	if c.draExists {
		c.slicesWhileDriver = true
	}
	delete(c.slices, driver)
	return nil
}

func (c *cluster) Nodes(context.Context) ([]kube.Meta, error) {
	var out []kube.Meta
	for name, l := range c.nodes {
		out = append(out, kube.Meta{Name: name, Labels: maps.Clone(l)})
	}
	return out, nil
}

func (c *cluster) PatchNode(_ context.Context, name string, patch any, _ string) error {
	if c.patchErr != nil {
		return c.patchErr
	}
	if c.dsExists {
		c.patchedWhileDS = true
	}
	for k, v := range patch.(map[string]any)["metadata"].(map[string]any)["labels"].(map[string]any) {
		if v == nil {
			delete(c.nodes[name], k)
		} else {
			c.nodes[name][k] = v.(string)
		}
	}
	return nil
}

func gpuNode() map[string]string {
	return map[string]string{
		"kubernetes.io/hostname":     "n",
		"nvidia.com/gpu.present":     "true", // the operator's, not the agent's
		"nvidia.com/gpu.product":     "NVIDIA-A100-SXM4-40GB",
		"nvidia.com/mig.strategy":    "single", // GFD's alone
		"gpuslice.io/slices-per-gpu": "8",
		"gpuslice.io/slices":         "16",
	}
}

func TestRunRemovesOwnedLabelsAfterTheAgentsAreGone(t *testing.T) {
	for _, tc := range []struct {
		name string
		gfd  bool
		want map[string]string
	}{
		{"gfd labels on", true, map[string]string{"kubernetes.io/hostname": "n", "nvidia.com/gpu.present": "true", "nvidia.com/mig.strategy": "single"}},
		{"gfd labels off", false, map[string]string{"kubernetes.io/hostname": "n", "nvidia.com/gpu.present": "true", "nvidia.com/mig.strategy": "single", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &cluster{dsExists: true, pollsToGone: 3, nodes: map[string]map[string]string{
				"gpu": gpuNode(), "cpu": {"kubernetes.io/hostname": "cpu"},
			}}
			n, err := Run(context.Background(), c, Options{Namespace: "gpuslice", DaemonSet: "gpuslice-agent", GFD: tc.gfd, Poll: time.Millisecond}, slog.New(slog.DiscardHandler))
			if err != nil || n != 1 {
				t.Fatalf("Run: %d nodes, %v; want 1, nil", n, err)
			}
			if !maps.Equal(c.nodes["gpu"], tc.want) {
				t.Errorf("labels left: %v, want %v", c.nodes["gpu"], tc.want)
			}
			if c.patchedWhileDS {
				t.Error("labels were removed while the agents still ran: their resync would restore them")
			}
			if len(c.nodes["cpu"]) != 1 {
				t.Errorf("a node without gpuslice labels was changed: %v", c.nodes["cpu"])
			}
		})
	}
}

func TestRunStopsWhenTheAgentsDoNotEnd(t *testing.T) {
	c := &cluster{dsExists: true, pollsToGone: 1 << 30, nodes: map[string]map[string]string{"gpu": gpuNode()}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := Run(ctx, c, Options{Namespace: "gpuslice", DaemonSet: "gpuslice-agent", Poll: time.Millisecond}, slog.New(slog.DiscardHandler)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want the deadline", err)
	}
	if c.nodes["gpu"]["gpuslice.io/slices"] != "16" {
		t.Error("labels were removed although the agents never stopped")
	}
}

func TestRunIsIdempotentAndReportsPatchFailures(t *testing.T) {
	c := &cluster{nodes: map[string]map[string]string{"gpu": gpuNode()}, patchErr: errors.New("forbidden")}
	if _, err := Run(context.Background(), c, Options{Namespace: "gpuslice", DaemonSet: "gpuslice-agent"}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a failed patch was not reported")
	}
	c.patchErr = nil
	for range 2 { // the DaemonSet is already gone; a second run changes nothing
		if _, err := Run(context.Background(), c, Options{Namespace: "gpuslice", DaemonSet: "gpuslice-agent"}, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := c.nodes["gpu"]["gpuslice.io/slices"]; ok {
		t.Error("labels left after a successful run")
	}
	if _, err := Run(context.Background(), c, Options{}, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("Run without a DaemonSet name did not fail")
	}
}

// TestRunRemovesTheDRADriversSlices: with the DRA driver, its DaemonSet is
// deleted and waited for, then its ResourceSlices, and no other driver's.
func TestRunRemovesTheDRADriversSlices(t *testing.T) {
	c := &cluster{dsExists: true, pollsToGone: 2, draExists: true, draPolls: 3,
		nodes: map[string]map[string]string{"gpu": gpuNode()}, slices: map[string]int{"gpu.gpuslice.io": 2, "nic.example.com": 1}}
	o := Options{Namespace: "gpuslice", DaemonSet: "gpuslice-agent", DRADaemonSet: "gpuslice-dra-driver", DRADriver: "gpu.gpuslice.io", Poll: time.Millisecond}
	if _, err := Run(context.Background(), c, o, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if c.draExists || c.slicesWhileDriver {
		t.Errorf("driver DaemonSet left %v; slices deleted while it ran %v", c.draExists, c.slicesWhileDriver)
	}
	if _, ok := c.slices["gpu.gpuslice.io"]; ok || c.slices["nic.example.com"] != 1 {
		t.Errorf("slices left: %v; want only the other driver's", c.slices)
	}
	o.DRADriver = ""
	if _, err := Run(context.Background(), c, o, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a DRA DaemonSet without its driver's name was accepted")
	}
}
