package multinode

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestClusterBinpacksAcrossNodes: the scheduler, scoring nodes by how full
// their slices would be (docs/scheduling.md), stacks small pods on one
// node, sends a pod that no longer fits there to the other, and leaves a
// pod that fits on no node pending; each pod's container is given its own
// node's GPU.
func TestClusterBinpacksAcrossNodes(t *testing.T) {
	ns := namespace(t, "binpack")
	cs := m.API.Clientset(t)
	create(t, ns, workloadPod("first", 1, "0.1", ""))
	first := waitRunning(t, ns, "first").Spec.NodeName
	create(t, ns, workloadPod("second", 1, "0.1", ""))
	if got := waitRunning(t, ns, "second").Spec.NodeName; got != first {
		t.Errorf("the second 1-slice pod went to %s, not to %s where the first is: not binpacked", got, first)
	}
	// 2 of 4 slices are free on the first node: 4 fit only on the other.
	create(t, ns, workloadPod("whole", 4, "0.1", ""))
	whole := waitRunning(t, ns, "whole").Spec.NodeName
	if whole == first {
		t.Errorf("a 4-slice pod was placed on %s, which has 2 free", first)
	}
	create(t, ns, workloadPod("third", 1, "0.1", ""))
	if got := waitRunning(t, ns, "third").Spec.NodeName; got != first {
		t.Errorf("the third 1-slice pod went to %s, not to %s, the only node with room", got, first)
	}
	// 1 free slice in the cluster: a 2-slice pod fits nowhere.
	create(t, ns, workloadPod("too-big", 2, "0.1", ""))
	waitFor(t, "too-big unschedulable", 60*time.Second, func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(context.Background(), "too-big", metav1.GetOptions{})
		if err != nil || p.Spec.NodeName != "" {
			return false
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Reason == corev1.PodReasonUnschedulable && strings.Contains(c.Message, "nvidia.com/vgpu") {
				return true
			}
		}
		return false
	})
	// Each pod's GPU is its node's: the agent there reports it, by name.
	for _, name := range []string{"first", "second", "whole", "third"} {
		p, err := cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		waitAgentReports(t, p)
	}
}
