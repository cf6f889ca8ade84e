package uninstall_test

import (
	"context"
	"log/slog"
	"maps"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/pkg/labels"
	"github.com/gpuslice/gpuslice/pkg/nodeslices"
	"github.com/gpuslice/gpuslice/pkg/uninstall"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

// TestAgentsAndGFDShareNodesOnARealAPIServer: GPU Feature Discovery has
// labelled two nodes; an agent ran on one of them, with its GFD-compatible
// labels on. The agent leaves GFD's keys to GFD (it does not take
// nvidia.com/gpu.product to write its own value), and uninstall removes
// only what the agent's field managers alone set, on the node it ran on:
// the node it never ran on keeps every label. Before, uninstall removed
// GFD's keys from every node.
func TestAgentsAndGFDShareNodesOnARealAPIServer(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ctx := context.Background()
	client, err := kube.New(srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	gfd := map[string]map[string]string{
		"gpu":      {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB", "nvidia.com/mig.strategy": "single"},
		"gfd-only": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.replicas": "1"},
	}
	for name, l := range gfd {
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := client.ApplyNodeLabels(ctx, name, l, "gpu-feature-discovery", true); err != nil {
			t.Fatal(err)
		}
	}
	w := labels.NewWriter(client, "gpu", true, slog.New(slog.DiscardHandler))
	desired := map[string]string{"gpuslice.io/slices": "16", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-SHARED", "nvidia.com/gpu.replicas": "8"}
	if _, err := w.Sync(ctx, desired); err != nil {
		t.Fatal(err)
	}
	got := func(name string) map[string]string {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		delete(n.Labels, "kubernetes.io/hostname")
		return n.Labels
	}
	want := map[string]string{"gpuslice.io/slices": "16", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB", "nvidia.com/mig.strategy": "single", "nvidia.com/gpu.replicas": "8"}
	if l := got("gpu"); !maps.Equal(l, want) {
		t.Errorf("after the agent's sync: %v, want %v (GFD's product kept)", l, want)
	}
	// The agent's free slices per GPU, for the extender, go too.
	state := contract.NodeSlices{Version: contract.NodeSlicesVersion, Resource: "nvidia.com/vgpu", Span: contract.SpanFewest,
		GPUs: []contract.GPUFree{{UUID: "GPU-a", Slices: 8, Free: 8}}}
	if err := nodeslices.NewPublisher(client, "gpu", nil).Publish(ctx, state, time.Now()); err != nil {
		t.Fatal(err)
	}
	n, err := uninstall.Run(ctx, client, uninstall.Options{Namespace: "gpuslice", DaemonSet: "gpuslice-agent", GFD: true}, slog.New(slog.DiscardHandler))
	if err != nil || n != 1 {
		t.Fatalf("uninstall: %d nodes, %v; want 1", n, err)
	}
	if l := got("gpu"); !maps.Equal(l, gfd["gpu"]) {
		t.Errorf("after uninstall the node the agent ran on has %v, want GFD's %v", l, gfd["gpu"])
	}
	if l := got("gfd-only"); !maps.Equal(l, gfd["gfd-only"]) {
		t.Errorf("after uninstall a node no agent ran on has %v, want GFD's %v", l, gfd["gfd-only"])
	}
	if node, err := cs.CoreV1().Nodes().Get(ctx, "gpu", metav1.GetOptions{}); err != nil || node.Annotations[contract.NodeSlicesAnnotation] != "" {
		t.Errorf("after uninstall the node keeps %s: %v", contract.NodeSlicesAnnotation, err)
	}
}
