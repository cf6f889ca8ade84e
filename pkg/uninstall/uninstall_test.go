package uninstall

import (
	"context"
	"encoding/json"
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
	owners         map[string]map[string][]string // node -> label -> field managers; default ownersOf
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
		owners := c.owners[name]
		if owners == nil {
			owners = ownersOf(l, "gpuslice-agent-gfd")
		}
		byManager := map[string]map[string]any{}
		for k, ms := range owners {
			if _, ok := l[k]; !ok {
				continue
			}
			for _, m := range ms {
				if byManager[m] == nil {
					byManager[m] = map[string]any{}
				}
				byManager[m]["f:"+k] = map[string]any{}
			}
		}
		meta := kube.Meta{Name: name, Labels: maps.Clone(l)}
		for m, fields := range byManager {
			raw, _ := json.Marshal(map[string]any{"f:metadata": map[string]any{"f:labels": fields}})
			meta.ManagedFields = append(meta.ManagedFields, kube.ManagedFields{Manager: m, Operation: "Apply", FieldsV1: raw})
		}
		out = append(out, meta)
	}
	return out, nil
}

// ownersOf says who set each label of a GPU node: the kubelet, NFD, GFD,
// the agent (gpuslice.io) and productOwner for nvidia.com/gpu.product.
func ownersOf(l map[string]string, productOwner ...string) map[string][]string {
	out := map[string][]string{}
	for k := range l {
		switch {
		case strings.HasPrefix(k, "gpuslice.io/"):
			out[k] = []string{"gpuslice-agent"}
		case k == "nvidia.com/gpu.product":
			out[k] = productOwner
		case k == "nvidia.com/gpu.present":
			out[k] = []string{"nfd-worker"}
		case strings.HasPrefix(k, "nvidia.com/"):
			out[k] = []string{"gpu-feature-discovery"}
		default:
			out[k] = []string{"kubelet"}
		}
	}
	return out
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
		"kubernetes.io/hostname":      "n",
		"nvidia.com/gpu.present":      "true", // the operator's, not the agent's
		"nvidia.com/gpu.product":      "NVIDIA-A100-SXM4-40GB",
		"nvidia.com/mig.strategy":     "single", // GFD's alone
		"gpuslice.io/slices-per-gpu":  "8",
		"gpuslice.io/slices":          "16",
		"slices.gpuslice.io/free-max": "4",          // the agent's, for the scheduler
		"slices.gpuslice.io/recheck":  "1796626494", // gpu-scheduler-extender's
	}
}

// TestRunRemovesOwnedLabelsAfterTheAgentsAreGone: once the agents are gone,
// each node loses the labels the agents' field managers alone set (the
// node's managedFields say so). A GFD label GFD also set, NFD's and GFD's
// own labels, and every label of a node no agent ran on stay: before,
// uninstall removed the GFD-compatible keys from every node.
func TestRunRemovesOwnedLabelsAfterTheAgentsAreGone(t *testing.T) {
	for _, tc := range []struct {
		name         string
		productOwner []string
		want         map[string]string
	}{
		{"a GFD label the agent alone set", []string{"gpuslice-agent-gfd"},
			map[string]string{"kubernetes.io/hostname": "n", "nvidia.com/gpu.present": "true", "nvidia.com/mig.strategy": "single"}},
		{"a GFD label GFD set too", []string{"gpuslice-agent-gfd", "gpu-feature-discovery"},
			map[string]string{"kubernetes.io/hostname": "n", "nvidia.com/gpu.present": "true", "nvidia.com/mig.strategy": "single", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noAgent := map[string]string{"kubernetes.io/hostname": "other", "nvidia.com/gpu.product": "NVIDIA-H100", "nvidia.com/gpu.replicas": "1"}
			c := &cluster{dsExists: true, pollsToGone: 3, nodes: map[string]map[string]string{
				"gpu": gpuNode(), "cpu": {"kubernetes.io/hostname": "cpu"}, "no-agent": maps.Clone(noAgent),
			}, owners: map[string]map[string][]string{"gpu": ownersOf(gpuNode(), tc.productOwner...), "no-agent": ownersOf(noAgent, "gpu-feature-discovery")}}
			n, err := Run(context.Background(), c, Options{Namespace: "gpuslice", DaemonSet: "gpuslice-agent", GFD: true, Poll: time.Millisecond}, slog.New(slog.DiscardHandler))
			if err != nil || n != 1 {
				t.Fatalf("Run: %d nodes, %v; want 1, nil", n, err)
			}
			if !maps.Equal(c.nodes["gpu"], tc.want) {
				t.Errorf("labels left: %v, want %v", c.nodes["gpu"], tc.want)
			}
			if c.patchedWhileDS {
				t.Error("labels were removed while the agents still ran: their resync would restore them")
			}
			if len(c.nodes["cpu"]) != 1 || !maps.Equal(c.nodes["no-agent"], noAgent) {
				t.Errorf("a node no agent labelled was changed: %v, %v", c.nodes["cpu"], c.nodes["no-agent"])
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
