package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/e2e/cluster"
)

// gpusliceScheduler is the second kube-scheduler's name: the one with
// gpu-scheduler-extender, as the chart deploys it where the cluster's own
// scheduler cannot be configured.
const gpusliceScheduler = "gpuslice-scheduler"

// restartAgentWith restarts the agent with extra flags, and back with its
// own at cleanup (registered first, so it runs after the test's namespace
// is gone).
func restartAgentWith(t *testing.T, extra ...string) {
	t.Helper()
	restartAgentOffering(t, 8, extra...)
}

// restartAgentOffering is restartAgentWith for an agent whose node
// offers allocatable nvidia.com/vgpu slices once ready (its fake GPUs
// changed); the agent restored at the end offers the usual 8.
func restartAgentOffering(t *testing.T, allocatable int64, extra ...string) {
	t.Helper()
	args := c.AgentArgs
	restart := func(with []string, allocatable int64) {
		t.Helper()
		port, err := apiserver.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		// Its own health port (the last flag wins), to ask it when it is
		// ready: registered with the kubelet, which holds its device list
		// stream open, and sampled.
		health := fmt.Sprintf("127.0.0.1:%d", port)
		c.StopAgent()
		c.AgentArgs = append(append([]string(nil), with...), "--health-address="+health)
		if err := c.StartAgent(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the restarted agent ready", 60*time.Second, func() bool {
			resp, err := http.Get("http://" + health + "/readyz") //nolint:noctx // loopback, polled
			if err != nil {
				return false
			}
			_ = resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		waitAllocatable(t, allocatable)
		c.AgentArgs = with
	}
	restart(append(append([]string(nil), args...), extra...), allocatable)
	t.Cleanup(func() { restart(args, 8) })
}

// startExtenderScheduler starts gpu-scheduler-extender and a second
// kube-scheduler (gpuslice-scheduler) configured to call it for
// nvidia.com/vgpu, as docs/scheduling.md shows.
func startExtenderScheduler(t *testing.T) {
	t.Helper()
	port, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ext, err := apiserver.StartProcess("gpu-scheduler-extender", extenderBin, "--kubeconfig="+c.API.Kubeconfig, "--listen-address="+addr, "--log-level=debug")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ext.Stop)
	waitFor(t, "the extender ready", 30*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	dir := t.TempDir()
	cfg := filepath.Join(dir, "scheduler.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %s
leaderElection:
  leaderElect: false
profiles:
- schedulerName: %s
extenders:
- urlPrefix: http://%s
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: 5
  nodeCacheCapable: true
  ignorable: false
  managedResources:
  - name: nvidia.com/vgpu
    ignoredByScheduler: false
`, c.API.Kubeconfig, gpusliceScheduler, addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	sport, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	kc := c.API.Kubeconfig
	sched, err := apiserver.StartProcess(gpusliceScheduler, filepath.Join(apiserver.BinDir(), "kube-scheduler"),
		"--config="+cfg, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", sport), "--v=0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sched.Stop)
}

// publishedFree waits until the agent's annotation on the node says the
// GPUs have free slices want (by index) and returns it.
func publishedFree(t *testing.T, want ...int) contract.NodeSlices {
	t.Helper()
	cs := c.API.Clientset(t)
	var last string
	var ns contract.NodeSlices
	waitFor(t, fmt.Sprintf("free slices %v published", want), 30*time.Second, func() bool {
		node, err := cs.CoreV1().Nodes().Get(context.Background(), cluster.NodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		last = node.Annotations[contract.NodeSlicesAnnotation]
		if ns, err = contract.ParseNodeSlices(last); err != nil || len(ns.GPUs) != len(want) {
			return false
		}
		// Beside it, the label the scheduler requeues pending pods on.
		if node.Labels[contract.NodeSlicesFreeMaxLabel] != strconv.Itoa(slices.Max(want)) {
			return false
		}
		for i, g := range ns.GPUs {
			if g.Free != want[i] {
				return false
			}
		}
		return true
	})
	return ns
}

// gpusHeld are the GPUs a running pod's container holds slices of.
func gpusHeld(t *testing.T, ns, name string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, id := range assignment(t, ns, name) {
		s, err := vgpu.ParseSliceID(id)
		if err != nil {
			t.Fatal(err)
		}
		out[s.UUID] = true
	}
	return out
}

func scheduledBy(p *corev1.Pod, scheduler string) *corev1.Pod {
	p.Spec.SchedulerName = scheduler
	return p
}

// TestExtenderPlacesByPerGPUFit: with gpu-scheduler-extender, a 3-slice
// pod on a node whose GPUs have 2+2 free stays Pending with a message
// naming per-GPU fit, and is placed, on one GPU, when a GPU frees. The
// cluster's own scheduler, which sees only the node's 4 free in all,
// places the same pod over both GPUs (--span=fewest).
func TestExtenderPlacesByPerGPUFit(t *testing.T) {
	restartAgentWith(t, "--placement=spread")
	startExtenderScheduler(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "extender")
	for _, n := range []string{"a", "b"} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, scheduledBy(pod(n, 2, "sleep 3600"), gpusliceScheduler), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRunning(t, ns, n)
	}
	if ga, gb := gpusHeld(t, ns, "a"), gpusHeld(t, ns, "b"); len(ga) != 1 || len(gb) != 1 || fmt.Sprint(ga) == fmt.Sprint(gb) {
		t.Fatalf("spread placement put a on %v and b on %v, want one GPU each", ga, gb)
	}
	publishedFree(t, 2, 2)
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, scheduledBy(pod("three", 3, "sleep 3600"), gpusliceScheduler), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	msg := waitUnschedulable(t, ns, "three", "no GPU has 3 free slices")
	t.Logf("pending: %s", msg)
	if !strings.Contains(msg, "free per GPU: 2,2") {
		t.Errorf("the message does not say what each GPU has free: %s", msg)
	}
	zero := int64(0)
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "a", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitRunning(t, ns, "three")
	woke := "no"
	if n, err := cs.CoreV1().Nodes().Get(ctx, cluster.NodeName, metav1.GetOptions{}); err == nil && n.Labels[contract.NodeRecheckLabel] != "" {
		woke = "yes"
	}
	t.Logf("placed %s after a GPU freed (the extender woke the scheduler, %s: %s)", time.Since(freed).Round(100*time.Millisecond), contract.NodeRecheckLabel, woke)
	if g := gpusHeld(t, ns, "three"); len(g) != 1 {
		t.Fatalf("three holds slices of %d GPUs, want 1", len(g))
	}

	// Back to 2+2 free, then the cluster's own scheduler.
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "three", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	publishedFree(t, 4, 2)
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, scheduledBy(pod("c", 2, "sleep 3600"), gpusliceScheduler), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "c")
	publishedFree(t, 2, 2)
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("straddles", 3, "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "straddles")
	if g := gpusHeld(t, ns, "straddles"); len(g) != 2 {
		t.Fatalf("without the extender, 3 slices on 2+2 free: %d GPUs, want the documented span over 2", len(g))
	}
}

// failedAdmissions counts a namespace's pods that failed admission.
func failedAdmissions(t *testing.T, ns string) int {
	t.Helper()
	pods, err := c.API.Clientset(t).CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodFailed && p.Status.Reason == "UnexpectedAdmissionError" {
			n++
		}
	}
	return n
}

// stormFor runs, on a --span=never node with 2+2 free slices, a Deployment
// whose one 3-slice pod fits no GPU, for d, and returns how many of its
// pods failed admission.
func stormFor(t *testing.T, d time.Duration, agentArgs ...string) int {
	t.Helper()
	restartAgentWith(t, append([]string{"--placement=spread", "--span=never"}, agentArgs...)...)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "storm")
	for _, n := range []string{"a", "b"} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod(n, 2, "sleep 3600"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRunning(t, ns, n)
	}
	tmpl := pod("", 3, "sleep 3600")
	tmpl.Spec.RestartPolicy = corev1.RestartPolicyAlways
	tmpl.Labels = map[string]string{"app": "too-wide"}
	one := int32(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "too-wide"},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: tmpl.Labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.AppsV1().Deployments(ns).Delete(context.Background(), dep.Name, metav1.DeleteOptions{}) })
	waitFor(t, "the first failed admission", 60*time.Second, func() bool { return failedAdmissions(t, ns) > 0 })
	time.Sleep(d)
	n := failedAdmissions(t, ns)
	if err := cs.AppsV1().Deployments(ns).Delete(ctx, dep.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSpanNeverBoundsFailedPods: on a --span=never node a Deployment whose
// pod fits no one GPU fails admission, and the hold-back keeps it from
// turning into a storm of failed pods; without it (--span-hold-back=0,
// the broken variant) the same Deployment fails pod after pod.
func TestSpanNeverBoundsFailedPods(t *testing.T) {
	const stormWindow, heldWindow = 20 * time.Second, 45 * time.Second
	var storm int
	t.Run("without the hold-back", func(t *testing.T) {
		storm = stormFor(t, stormWindow, "--span-hold-back=0")
		t.Logf("--span-hold-back=0: %d failed pods in %s after the first", storm, stormWindow)
	})
	t.Run("with the hold-back", func(t *testing.T) {
		held := stormFor(t, heldWindow)
		t.Logf("--span-hold-back=30s: %d failed pods in %s after the first", held, heldWindow)
		// The first refusal holds 2 slices back for 30 s and the agent
		// writes the node's allocatable at once; the next try comes when
		// the hold-back ends, 30 s in.
		if held > 4 {
			t.Errorf("%d failed pods with the hold-back, want at most 4", held)
		}
		perMinStorm := float64(storm) / stormWindow.Minutes()
		perMinHeld := float64(held) / heldWindow.Minutes()
		if perMinStorm < 10*perMinHeld {
			t.Errorf("%.0f failed pods a minute without the hold-back, %.1f with: the bound does not come from the hold-back", perMinStorm, perMinHeld)
		}
	})
}
