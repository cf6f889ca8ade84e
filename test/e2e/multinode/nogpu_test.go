package multinode

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestClusterAgentWithoutGPUsIsHarmless: a node without GPUs labelled as
// a GPU node by mistake gets the chart's agent. It stays up and ready
// (no crash loop), offers nothing, says why on /metrics, and leaves the
// node's pods alone; the GPU nodes keep their slices.
func TestClusterAgentWithoutGPUsIsHarmless(t *testing.T) {
	ns := namespace(t, "cpu")
	cs := m.API.Clientset(t)
	ctx := context.Background()
	zero := int64(0)
	sleeper := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleeper"},
		Spec: corev1.PodSpec{
			HostNetwork: true, NodeSelector: map[string]string{"kubernetes.io/hostname": cpuNode}, TerminationGracePeriodSeconds: &zero,
			Tolerations: []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "main", Image: "gpuslice.local/e2e:1", ImagePullPolicy: corev1.PullNever, Command: []string{"/bin/sleep", "3600"}}},
		},
	}
	create(t, ns, sleeper)
	before := waitRunning(t, ns, "sleeper")

	// What a mistaken node label looks like; null removes it again.
	setLabel := func(value string) {
		patch := `{"metadata":{"labels":{"nvidia.com/gpu.present":` + value + `}}}`
		if _, err := cs.CoreV1().Nodes().Patch(ctx, cpuNode, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setLabel(`"true"`)
	t.Cleanup(func() { setLabel("null") })
	var agent *corev1.Pod
	waitFor(t, "the chart's agent ready on "+cpuNode, 2*time.Minute, func() bool {
		for _, p := range listAgents(t) {
			if p.Spec.NodeName == cpuNode && podReady(&p) {
				agent = &p
				return true
			}
		}
		return false
	})
	// It says why it idles.
	waitFor(t, "gpuslice_agent_no_gpu on "+cpuNode, 30*time.Second, func() bool {
		mfs, err := agentMetrics(node(cpuNode))
		if err != nil {
			return false
		}
		s := mfs["gpuslice_agent_no_gpu"].GetMetric()
		return len(s) == 1 && s[0].GetGauge().GetValue() == 1 && label(s[0], "reason") == "no-device"
	})
	// A while later: never restarted, still ready, nothing offered, the
	// node's pod untouched, the GPU nodes' slices still there.
	time.Sleep(10 * time.Second)
	now, err := cs.CoreV1().Pods(releaseNS).Get(ctx, agent.Name, metav1.GetOptions{})
	if err != nil || !podReady(now) || now.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the agent on %s did not stay up: %v %+v", cpuNode, err, now.Status.ContainerStatuses)
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, cpuNode, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if q, ok := n.Status.Allocatable["nvidia.com/vgpu"]; ok && !q.IsZero() {
		t.Errorf("%s offers %s nvidia.com/vgpu without a GPU", cpuNode, q.String())
	}
	p, err := cs.CoreV1().Pods(ns).Get(ctx, "sleeper", metav1.GetOptions{})
	if err != nil || p.UID != before.UID || p.Status.Phase != corev1.PodRunning || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the node's pod was disturbed: %v %v", err, p.Status)
	}
	for _, name := range gpuNodes {
		gn, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if q := gn.Status.Allocatable["nvidia.com/vgpu"]; err != nil || q.Value() != slicesPerGPU {
			t.Errorf("%s offers %s nvidia.com/vgpu: %v", name, q.String(), err)
		}
	}
}
