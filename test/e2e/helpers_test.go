package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/test/e2e/cluster"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// newNamespace creates a namespace for one test and deletes it, waiting
// for its pods to be gone, when the test ends.
func newNamespace(t *testing.T, name string) string {
	t.Helper()
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%100000)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitServiceAccount(t, ns)
	t.Cleanup(func() {
		zero := int64(0)
		_ = cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		deadline := time.Now().Add(60 * time.Second)
		for {
			pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err == nil && len(pods.Items) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("pods of %s not gone after 60s", ns)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		_ = cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	})
	return ns
}

// waitServiceAccount waits for the controller manager to create a new
// namespace's default ServiceAccount: until then the ServiceAccount
// admission plugin refuses the namespace's pods, as on any cluster.
func waitServiceAccount(t *testing.T, ns string) {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(context.Background(), "default", metav1.GetOptions{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace %s has no default ServiceAccount after 30s: %v", ns, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pod is a pod asking for slices, running script in the test image with
// the fake GPU's workload dir mounted. The scheduler places it, as on any
// cluster; it tolerates the node's not-ready taint (the test node has no
// pod network, so it never reports Ready, and its pods use the host's).
func pod(name string, slices int64, script string) *corev1.Pod {
	never := corev1.RestartPolicyNever
	hostPathDir := corev1.HostPathDirectory
	zero := int64(0)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			HostNetwork: true,
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists},
			},
			RestartPolicy:                 never,
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "main", Image: cluster.TestImage, ImagePullPolicy: corev1.PullNever,
				Command:      []string{"/bin/sh", "-c", script},
				Env:          []corev1.EnvVar{{Name: "GPUSLICE_FAKE_WORKLOAD_DIR", Value: c.WorkloadDir}},
				VolumeMounts: []corev1.VolumeMount{{Name: "fakegpu", MountPath: c.WorkloadDir}},
			}},
			Volumes: []corev1.Volume{{Name: "fakegpu", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: c.WorkloadDir, Type: &hostPathDir}}}},
		},
	}
	if slices > 0 {
		p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{"nvidia.com/vgpu": *resource.NewQuantity(slices, resource.DecimalSI)}
	}
	return p
}

// withHostPID runs the pod in the host's PID namespace. Fake GPU workloads
// report their own PIDs to the fake driver, which, like NVML, must know
// them as the host sees them; the pod's cgroups are its own either way.
func withHostPID(p *corev1.Pod) *corev1.Pod {
	p.Spec.HostPID = true
	return p
}

// waitRunning waits until the pod runs and returns it.
func waitRunning(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	return waitPhase(t, ns, name, corev1.PodRunning)
}

func waitPhase(t *testing.T, ns, name string, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == phase {
			return p
		}
		if time.Now().After(deadline) {
			status := ""
			if p != nil {
				status = fmt.Sprintf("%s %s %s", p.Status.Phase, p.Status.Reason, p.Status.Message)
			}
			t.Fatalf("pod %s/%s not %s after 60s: %v %s", ns, name, phase, err, status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitUnschedulable waits until the scheduler reports it cannot place a
// pod, with a message containing why, and returns the message. The pod
// stays Pending on no node.
func waitUnschedulable(t *testing.T, ns, name, why string) string {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable && strings.Contains(cond.Message, why) {
					if p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
						t.Errorf("pod %s/%s is %s on %q, want Pending on no node", ns, name, p.Status.Phase, p.Spec.NodeName)
					}
					return cond.Message
				}
			}
		}
		if time.Now().After(deadline) {
			var conds any
			if p != nil {
				conds = p.Status.Conditions
			}
			t.Fatalf("pod %s/%s never unschedulable for %q after 60s: %v %+v", ns, name, why, err, conds)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// podLogs returns the main container's log as the kubelet wrote it
// (CRI format, one "<time> <stream> <tag> <line>" per line), waiting until
// it has lines. The API server's log proxy is not used: the kubelet
// listens on loopback only.
func podLogs(t *testing.T, ns, name string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(c.PodLogsDir, ns+"_"+name+"_*", "main", "*.log"))
		var b strings.Builder
		for _, f := range files {
			data, _ := os.ReadFile(f)
			for line := range strings.SplitSeq(string(data), "\n") {
				if f := strings.SplitN(line, " ", 4); len(f) == 4 {
					b.WriteString(f[3] + "\n")
				}
			}
		}
		if b.Len() > 0 {
			return b.String()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no logs from %s/%s in %s", ns, name, c.PodLogsDir)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// assignment returns the slice IDs the kubelet's pod-resources API
// reports for a pod's main container, sorted.
func assignment(t *testing.T, ns, name string) []string {
	t.Helper()
	o := podresources.DefaultOptions()
	o.Socket = c.PodResourcesSocket
	client, err := podresources.New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		as, err := client.List(context.Background())
		for _, a := range as {
			if a.Namespace == ns && a.Pod == name && a.Container == "main" {
				ids := append([]string(nil), a.DeviceIDs...)
				sort.Strings(ids)
				return ids
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod-resources has no slices for %s/%s: %v %v", ns, name, err, as)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitAllocatable waits until the node's allocatable nvidia.com/vgpu is n.
func waitAllocatable(t *testing.T, n int64) {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		node, err := cs.CoreV1().Nodes().Get(context.Background(), cluster.NodeName, metav1.GetOptions{})
		if err == nil {
			if q, ok := node.Status.Allocatable["nvidia.com/vgpu"]; ok && q.Value() == n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("allocatable nvidia.com/vgpu never reached %d: %v", n, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitAgentRegistrations waits until the agent's current process has
// registered with the kubelet at least n times.
func waitAgentRegistrations(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(c.AgentOutput(), "registered with kubelet") < n {
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not register %d times:\n%s", n, c.AgentLogs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrape reads the agent's /metrics.
func scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	return promtest.Scrape(t, "http://"+c.MetricsAddr+"/metrics")
}

// value finds the sample of a family whose labels include want.
var value = promtest.Value

// workShare is the share of wall time over d that the fake GPU workload of
// pod ns/name ran, judged by its own progress: the GPU time it asked for,
// which it publishes in the workload directory under its (host) PID. A
// frozen process asks for none. It is the agent's sensor's independent
// check: the throttle is judged by what the tenant got done, never by the
// agent's own busy-seconds alone.
func workShare(t *testing.T, ns, name string, d time.Duration) float64 {
	t.Helper()
	p, err := c.API.Clientset(t).CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	uid := string(p.UID)
	files, _ := filepath.Glob(filepath.Join(c.WorkloadDir, "*.json"))
	path := ""
	for _, f := range files {
		pid := strings.TrimSuffix(filepath.Base(f), ".json")
		cg, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
		if err == nil && (strings.Contains(string(cg), uid) || strings.Contains(string(cg), strings.ReplaceAll(uid, "-", "_"))) {
			path = f
		}
	}
	if path == "" {
		t.Fatalf("no workload of pod %s/%s (uid %s) publishes its progress in %s", ns, name, uid, c.WorkloadDir)
	}
	asked := func() (time.Duration, time.Time) {
		var st fakegpu.WorkloadState
		for range 100 {
			data, err := os.ReadFile(path)
			if err == nil && json.Unmarshal(data, &st) == nil {
				return time.Duration(st.RequestedNanos), time.Now()
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("workload state %s unreadable", path)
		return 0, time.Time{}
	}
	a0, t0 := asked()
	time.Sleep(d)
	a1, t1 := asked()
	return float64(a1-a0) / float64(t1.Sub(t0))
}

// measuredShare is the share of the GPU a container used over d, from the
// agent's busy-seconds counter.
func measuredShare(t *testing.T, labels map[string]string, d time.Duration) float64 {
	t.Helper()
	first, t0 := scrape(t), time.Now()
	time.Sleep(d)
	second, t1 := scrape(t), time.Now()
	b0, _ := value(first, "gpuslice_container_gpu_busy_seconds_total", labels)
	b1, _ := value(second, "gpuslice_container_gpu_busy_seconds_total", labels)
	return (b1 - b0) / t1.Sub(t0).Seconds()
}
