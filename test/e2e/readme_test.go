package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/test/e2e/cluster"
)

// readmeExample is the README's worked example, the YAML block after "A
// pod asking for 3 of a GPU's 8 slices".
func readmeExample(t *testing.T) *corev1.Pod {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "A pod asking for 3 of a GPU's 8 slices")
	if !ok {
		t.Fatal("the README's worked example is gone")
	}
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("the README's worked example has no yaml block")
	}
	var p corev1.Pod
	if err := yaml.UnmarshalStrict([]byte(block), &p); err != nil {
		t.Fatalf("the README's worked example: %v", err)
	}
	return &p
}

// TestReadmeExampleIsScheduled applies the README's worked example as
// written: the scheduler places it on the node by its GPU product label and
// its nvidia.com/vgpu request, and the kubelet hands it 3 slices (its image
// cannot be pulled here, which comes after). The same pod with affinity for
// another product stays Pending, with the scheduler's reason.
func TestReadmeExampleIsScheduled(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "readme")
	p := readmeExample(t)
	// The test node has no pod network, so it never reports Ready.
	tolerate := []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}}
	p.Spec.Tolerations = tolerate
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err == nil && got.Spec.NodeName == cluster.NodeName {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the README's example was never scheduled: %v %+v", err, got.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The kubelet admitted it: its container holds 3 slices.
	if got := assignment(t, ns, p.Name); len(got) != 3 {
		t.Errorf("the README's example holds %v, want 3 slices", got)
	}

	other := readmeExample(t)
	other.Name = "train-on-h100"
	other.Spec.Tolerations = tolerate
	other.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions[0].Values = []string{"NVIDIA-H100-80GB-HBM3"}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	msg := waitUnschedulable(t, ns, other.Name, "node affinity")
	t.Logf("a pod for another product: %s", msg)
}

// readmeInstall is the README's install block: its commands, comments and
// line continuations removed, each split into words (the block has no
// quoting).
func readmeInstall(t *testing.T) [][]string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- The end-to-end tier runs this block command by command (TestHelmInstall). -->\n```sh\n")
	if !ok {
		t.Fatal("the README's install block is gone")
	}
	block, _, _ := strings.Cut(rest, "```")
	var cmds [][]string
	for line := range strings.SplitSeq(strings.ReplaceAll(block, "\\\n", " "), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if words := strings.Fields(line); len(words) > 0 {
			cmds = append(cmds, words)
		}
	}
	return cmds
}
