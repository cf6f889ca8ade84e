package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestAgentImageRuns builds the agent's image the way make image does,
// imports it, and runs the agent from it in a pod: the image holds what
// the binary needs to start.
func TestAgentImageRuns(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "gpu-agent-image.tar")
	const ref = "gpuslice.local/gpu-agent:e2e"
	out, err := exec.Command("go", "run", "github.com/gpuslice/gpuslice/tools/mkimage", "--binary", agentBin, "--name", ref, "--out", archive).CombinedOutput()
	if err != nil {
		t.Fatalf("mkimage: %v\n%s", err, out)
	}
	if err := c.ImportArchive(archive); err != nil {
		t.Fatal(err)
	}
	cs := c.API.Clientset(t)
	ns := newNamespace(t, "image")
	p := pod("agent", 0, "")
	p.Spec.Volumes, p.Spec.Containers[0].VolumeMounts = nil, nil
	p.Spec.Containers[0].Image = ref
	p.Spec.Containers[0].Command = []string{"/gpu-agent", "--help"}
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "agent", corev1.PodSucceeded)
	if logs := podLogs(t, ns, "agent"); !strings.Contains(logs, "--gpu-backend") {
		t.Errorf("the agent in its image printed no usage:\n%s", logs)
	}
}
