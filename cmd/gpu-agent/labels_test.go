package main

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/test/apiserver"
)

// TestAgentLabelsItsNode runs the agent against a real kube-apiserver: its
// node gets the GPU labels, another node is left alone.
func TestAgentLabelsItsNode(t *testing.T) {
	t.Parallel()
	srv := apiserver.Start(t)
	client := srv.Clientset(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, name := range []string{"gpu-node", "other-node"} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a := startAgent(t, "--gpu-backend=fake", "--device-plugin-dir="+t.TempDir(), "--metrics-address="+freePort(t),
		"--kubeconfig="+srv.Kubeconfig, "--node-name=gpu-node", "--slices-per-gpu=4")
	var got map[string]string
	for ctx.Err() == nil {
		n, err := client.CoreV1().Nodes().Get(ctx, "gpu-node", metav1.GetOptions{})
		if err == nil && n.Labels["gpuslice.io/slices"] != "" {
			got = n.Labels
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got == nil {
		t.Fatalf("the agent never labelled its node\n%s", a.stderr.String())
	}
	for k, v := range map[string]string{
		"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB", "nvidia.com/gpu.count": "4", "nvidia.com/gpu.family": "ampere",
		"gpuslice.io/slices-per-gpu": "4", "gpuslice.io/slices": "16", "gpuslice.io/enforcement": "freezer",
		"kubernetes.io/hostname": "gpu-node",
	} {
		if got[k] != v {
			t.Errorf("label %s = %q, want %q", k, got[k], v)
		}
	}
	other, err := client.CoreV1().Nodes().Get(ctx, "other-node", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"kubernetes.io/hostname": "other-node"}, other.Labels); diff != "" {
		t.Errorf("the agent touched another node (-want +got)\n%s", diff)
	}
}
