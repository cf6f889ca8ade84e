package gputop

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func agentPod(ns, name, node string, phase corev1.PodPhase, port string) corev1.Pod {
	yes := true
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "gpuslice-agent", Controller: &yes},
		}},
		Spec:   corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "agent"}}},
		Status: corev1.PodStatus{Phase: phase},
	}
	if port != "" {
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "health", ContainerPort: 1}, {Name: port, ContainerPort: 9445}}
	}
	return p
}

func TestAgentTargets(t *testing.T) {
	bare := agentPod("ml", "not-owned", "node-e", corev1.PodRunning, "metrics")
	bare.OwnerReferences = nil
	pods := []corev1.Pod{
		agentPod("gpuslice", "agent-b", "node-b", corev1.PodRunning, "metrics"),
		agentPod("gpuslice", "agent-a", "node-a", corev1.PodRunning, "metrics"),
		agentPod("gpuslice", "agent-pending", "", corev1.PodPending, "metrics"),
		agentPod("gpuslice", "agent-noport", "node-c", corev1.PodRunning, ""),
		agentPod("gpuslice", "agent-otherport", "node-d", corev1.PodRunning, "web"),
		bare, // a tenant's pod wearing the agents' labels
		// A tenant's own DaemonSet wearing them, on a node with no agent:
		// outside the agents' namespace, it never speaks for the node.
		agentPod("ml", "tenant-ds", "node-e", corev1.PodRunning, "metrics"),
	}
	targets, skipped, err := AgentTargets(pods, "gpuslice", "https://api.example:6443/")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"node-a=https://api.example:6443/api/v1/namespaces/gpuslice/pods/agent-a:9445/proxy/metrics",
		"node-b=https://api.example:6443/api/v1/namespaces/gpuslice/pods/agent-b:9445/proxy/metrics",
	}
	if !slices.Equal(targets, want) {
		t.Errorf("targets = %v, want %v", targets, want)
	}
	if !slices.Equal(skipped, []string{"gpuslice/agent-pending", "gpuslice/agent-noport", "gpuslice/agent-otherport", "ml/not-owned", "ml/tenant-ds"}) {
		t.Errorf("skipped = %v", skipped)
	}
	// A tenant's DaemonSet claiming a node that has an agent: an error
	// naming both, not a guess at which one to believe.
	impostor := agentPod("ml", "impostor", "node-a", corev1.PodRunning, "metrics")
	if _, _, err := AgentTargets(append(pods, impostor), "", "https://api.example:6443"); err == nil ||
		!strings.Contains(err.Error(), "gpuslice/agent-a") || !strings.Contains(err.Error(), "ml/impostor") {
		t.Errorf("two agents on one node: %v", err)
	}
}

func TestServiceProxy(t *testing.T) {
	for in, want := range map[string]string{
		"monitoring/prometheus-k8s":      "https://api:6443/api/v1/namespaces/monitoring/services/prometheus-k8s:9090/proxy",
		"monitoring/prometheus-k8s:web":  "https://api:6443/api/v1/namespaces/monitoring/services/prometheus-k8s:web/proxy",
		"monitoring/prometheus-k8s:9091": "https://api:6443/api/v1/namespaces/monitoring/services/prometheus-k8s:9091/proxy",
	} {
		got, err := ServiceProxy("https://api:6443", in)
		if err != nil || got != want {
			t.Errorf("ServiceProxy(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"prometheus", "/prometheus", "monitoring/", "monitoring/:9090", "monitoring/p:"} {
		if _, err := ServiceProxy("https://api:6443", bad); err == nil {
			t.Errorf("ServiceProxy(%q) accepted", bad)
		}
	}
}
