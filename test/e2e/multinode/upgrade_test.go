package multinode

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestClusterHelmUpgradeRollsNodeByNode: helm upgrade of the release
// rolls the agents one node at a time (never fewer than all but one
// ready), and the pods running on every node keep their slices and, once
// their node's new agent runs, their compute limits, judged by the work
// the workloads themselves say they did.
func TestClusterHelmUpgradeRollsNodeByNode(t *testing.T) {
	ns := namespace(t, "upgrade")
	cs := m.API.Clientset(t)
	ctx := context.Background()
	var pods []*corev1.Pod
	for i, n := range gpuNodes {
		name := fmt.Sprintf("held-%d", i)
		create(t, ns, workloadPod(name, 1, "1", n)) // wants the whole GPU, holds 1 of 4 slices
		pods = append(pods, waitRunning(t, ns, name))
	}
	for _, p := range pods {
		waitAgentReports(t, p)
		waitHeld(t, p)
	}
	before := agentPods(t)
	if len(before) != len(gpuNodes) {
		t.Fatalf("agent pods before the upgrade: %v; want one on each of %v", before, gpuNodes)
	}

	// Watch the agents while helm upgrades: how many are ready at worst.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	minReady := len(gpuNodes)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			ready := 0
			for _, p := range listAgents(t) {
				if podReady(&p) && p.DeletionTimestamp == nil {
					ready++
				}
			}
			minReady = min(minReady, ready)
		}
	})
	values, err := chartValues(map[string]any{"podAnnotations": map[string]any{"gpuslice.test/rollout": "2"}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := runHelm("upgrade", release, "deployments/helm/gpuslice", "--namespace", releaseNS, "-f", values, "--wait", "--timeout", "4m")
	if err != nil {
		close(stop)
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	// --wait returns when the DaemonSet's pods are updated and ready.
	waitFor(t, "every agent replaced", 2*time.Minute, func() bool {
		after := agentPods(t)
		for node, uid := range before {
			if after[node] == "" || after[node] == uid {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()
	t.Logf("helm upgrade rolled %d agents in %v; at worst %d ready", len(gpuNodes), time.Since(start).Round(time.Second), minReady)
	if minReady < len(gpuNodes)-1 {
		t.Errorf("during the upgrade only %d agents were ready: not one node at a time", minReady)
	}
	for _, p := range pods {
		now, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil || now.UID != p.UID || now.Status.Phase != corev1.PodRunning || now.DeletionTimestamp != nil {
			t.Fatalf("pod %s did not survive the upgrade: %v %v", p.Name, err, now.Status.Phase)
		}
		waitAgentReports(t, now)
		waitHeld(t, now)
	}
}

// waitHeld waits until the pod's agent says its compute share is held
// and the workload's own account shows it ran under half the time over a
// few seconds (its share is a quarter: unheld it would run all the time).
func waitHeld(t *testing.T, p *corev1.Pod) {
	t.Helper()
	n := node(p.Spec.NodeName)
	waitFor(t, "the compute share of "+p.Name+" enforced", 60*time.Second, func() bool {
		mfs, err := agentMetrics(n)
		if err != nil {
			return false
		}
		for _, s := range mfs["gpuslice_enforcement_enforced"].GetMetric() {
			if label(s, "pod") == p.Name && label(s, "namespace") == p.Namespace && label(s, "resource") == "compute" {
				return s.GetGauge().GetValue() == 1
			}
		}
		return false
	})
	time.Sleep(time.Second)
	w0, t0 := workedSeconds(t, p), time.Now()
	time.Sleep(4 * time.Second)
	share := (workedSeconds(t, p) - w0) / time.Since(t0).Seconds()
	t.Logf("%s on %s ran %.2f of the time under a strict 25%% share", p.Name, p.Spec.NodeName, share)
	if share > 0.45 {
		t.Errorf("%s on %s ran %.2f of the time under a strict 25%% share: not held", p.Name, p.Spec.NodeName, share)
	}
}

// listAgents lists the chart's agent pods.
func listAgents(t *testing.T) []corev1.Pod {
	t.Helper()
	pods, err := m.API.Clientset(t).CoreV1().Pods(releaseNS).List(context.Background(), metav1.ListOptions{LabelSelector: agentSelector})
	if err != nil {
		return nil
	}
	return pods.Items
}

// agentPods maps each node to its ready agent pod's UID.
func agentPods(t *testing.T) map[string]types.UID {
	t.Helper()
	out := map[string]types.UID{}
	for _, p := range listAgents(t) {
		if podReady(&p) && p.DeletionTimestamp == nil {
			out[p.Spec.NodeName] = p.UID
		}
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
