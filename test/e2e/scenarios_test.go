package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/test/e2e/cluster"
)

// Scenario 1: the Node's capacity and allocatable show GPUs x slices, and
// the agent's labels are on it.
func TestNodeCapacity(t *testing.T) {
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(30 * time.Second)
	var last map[string]string
	for {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), cluster.NodeName, metav1.GetOptions{})
		if err == nil {
			capq, alloc := n.Status.Capacity["nvidia.com/vgpu"], n.Status.Allocatable["nvidia.com/vgpu"]
			l := n.Labels
			last = l
			if capq.Value() == 8 && alloc.Value() == 8 && l["nvidia.com/gpu.count"] == "2" &&
				l["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB" && l["gpuslice.io/slices-per-gpu"] == "4" &&
				l["nvidia.com/gpu.replicas"] == "4" && l["nvidia.com/gpu.sharing-strategy"] == "time-slicing" &&
				l["nvidia.com/mig.capable"] == "true" && l["nvidia.com/cuda.driver.major"] != "" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node never showed 8 nvidia.com/vgpu and the GPU labels: %v %v", err, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Scenario 2: a pod asking for 3 slices runs with 3 slices of one GPU.
func TestPodGetsSlicesOfOneGPU(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "slices")
	before := strings.Count(c.AgentLogs(), "preferred allocation")
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("three", 3, "env; sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "three")
	env := map[string]string{}
	for line := range strings.SplitSeq(podLogs(t, ns, "three"), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	ids := strings.Split(env["GPUSLICE_SLICE_IDS"], ",")
	if len(ids) != 3 || env["NVIDIA_VISIBLE_DEVICES"] == "" || strings.Contains(env["NVIDIA_VISIBLE_DEVICES"], ",") {
		t.Fatalf("container env: NVIDIA_VISIBLE_DEVICES=%q GPUSLICE_SLICE_IDS=%q; want one GPU and 3 slices", env["NVIDIA_VISIBLE_DEVICES"], env["GPUSLICE_SLICE_IDS"])
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, env["NVIDIA_VISIBLE_DEVICES"]+"::") {
			t.Errorf("slice %s is not on GPU %s", id, env["NVIDIA_VISIBLE_DEVICES"])
		}
	}
	if env["GPUSLICE_SLICES"] != "3" || env["GPUSLICE_MEMORY_LIMIT_BYTES"] != "32212254720" || env["GPUSLICE_COMPUTE_LIMIT_RATIO"] != "0.75" {
		t.Errorf("limits in env: %v", env)
	}
	// The kubelet asked for a preferred allocation, then allocated.
	logs := c.AgentLogs()
	if strings.Count(logs, "preferred allocation") <= before || !strings.Contains(logs, "allocated slices="+strings.Join(ids, ",")) {
		t.Errorf("the agent did not see GetPreferredAllocation then Allocate of %v:\n%s", ids, logs)
	}
	// The kubelet's pod-resources API reports the same slices.
	got := assignment(t, ns, "three")
	sort.Strings(ids)
	if strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Errorf("pod-resources reports %v for the container, its env says %v", got, ids)
	}
}

// Scenario 3: pods asking together for more than exists: the scheduler
// leaves the excess Pending, saying why; nothing is handed out twice.
func TestOverRequestRejected(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "over")
	names := []string{"a", "b", "c"}
	for _, n := range names {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod(n, 3, "sleep 3600"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // admitted in order
	}
	waitRunning(t, ns, "a")
	waitRunning(t, ns, "b")
	waitUnschedulable(t, ns, "c", "Insufficient nvidia.com/vgpu")
	seen := map[string]string{}
	for _, n := range names[:2] {
		for _, id := range assignment(t, ns, n) {
			if other, dup := seen[id]; dup {
				t.Errorf("slice %s held by both %s and %s", id, other, n)
			}
			seen[id] = n
		}
	}
	if len(seen) != 6 {
		t.Errorf("%d slices held by the two running pods, want 6", len(seen))
	}
}

// Scenario 4: an XID on one fake GPU takes its slices out of allocatable
// within seconds; they return when the GPU recovers.
func TestXIDTakesSlicesAway(t *testing.T) {
	orig, err := os.ReadFile(c.FakeConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(c.FakeConfig, orig, 0o600) })
	cs := c.API.Clientset(t)
	ns := newNamespace(t, "xid")
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod("holder", 1, "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "holder")
	index := gpuIndex(t, assignmentGPU(t, ns, "holder"))
	start := time.Now()
	if err := os.WriteFile(c.FakeConfig, append(append([]byte(nil), orig...), fmt.Sprintf("faults:\n  gpus:\n    - index: %s\n      xid: 79\n", index)...), 0o600); err != nil {
		t.Fatal(err)
	}
	waitAllocatable(t, 4)
	t.Logf("allocatable 8 -> 4 in %v", time.Since(start).Round(time.Millisecond))
	// Resource health status (beta and on by default since 1.36): the pod
	// whose slices' GPU failed shows it in its container's status.
	health := resourceHealth(t)
	if health {
		waitSliceHealth(t, ns, "holder", corev1.ResourceHealthStatusUnhealthy)
	}
	start = time.Now()
	if err := os.WriteFile(c.FakeConfig, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	waitAllocatable(t, 8)
	t.Logf("allocatable 4 -> 8 in %v", time.Since(start).Round(time.Millisecond))
	if health {
		waitSliceHealth(t, ns, "holder", corev1.ResourceHealthStatusHealthy)
	}
}

// resourceHealth reports whether the cluster's Kubernetes fills in
// allocatedResourcesStatus by default (1.36 and later).
func resourceHealth(t *testing.T) bool {
	t.Helper()
	v, err := c.API.Version()
	if err != nil {
		t.Fatal(err)
	}
	var major, minor int
	if _, err := fmt.Sscanf(v, "v%d.%d", &major, &minor); err != nil {
		t.Fatalf("server version %q: %v", v, err)
	}
	return major > 1 || minor >= 36
}

// waitSliceHealth waits until every slice of nvidia.com/vgpu in the pod's
// main container has the given health in its status.
func waitSliceHealth(t *testing.T, ns, name string, want corev1.ResourceHealthStatus) {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		var got []corev1.ResourceHealth
		if err == nil && len(p.Status.ContainerStatuses) == 1 {
			for _, r := range p.Status.ContainerStatuses[0].AllocatedResourcesStatus {
				if r.Name == "nvidia.com/vgpu" {
					got = r.Resources
				}
			}
		}
		ok := len(got) > 0
		for _, r := range got {
			ok = ok && r.Health == want
		}
		if ok {
			t.Logf("pod %s/%s: allocatedResourcesStatus %s: %+v", ns, name, want, got)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s/%s never showed its slices %s in allocatedResourcesStatus: %v %+v", ns, name, want, err, got)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// gpuIndex is the agent's index of the GPU with uuid, from its metrics.
func gpuIndex(t *testing.T, uuid string) string {
	t.Helper()
	for _, mf := range scrape(t) {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["uuid"] == uuid && labels["gpu"] != "" {
				return labels["gpu"]
			}
		}
	}
	t.Fatalf("no metric names the index of GPU %s", uuid)
	return ""
}

// Scenario 5: a kubelet restart and an agent restart need no operator:
// capacity returns, running pods keep their slices, none is given twice.
func TestRestarts(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "restart")
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("keeper", 2, "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "keeper")
	held := assignment(t, ns, "keeper")

	c.StopKubelet()
	start := time.Now()
	if err := c.StartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	waitAgentRegistrations(t, 2)
	waitAllocatable(t, 8)
	t.Logf("kubelet restart: capacity back %v after the kubelet started", time.Since(start).Round(time.Millisecond))

	c.KillAgent()
	if err := c.StartAgent(); err != nil {
		t.Fatal(err)
	}
	waitAgentRegistrations(t, 1)
	if got := assignment(t, ns, "keeper"); strings.Join(got, ",") != strings.Join(held, ",") {
		t.Errorf("after restarts the running pod holds %v, before %v", got, held)
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("newcomer", 2, "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "newcomer")
	for _, id := range assignment(t, ns, "newcomer") {
		if slices.Contains(held, id) {
			t.Errorf("slice %s handed out twice", id)
		}
	}
	p, err := cs.CoreV1().Pods(ns).Get(ctx, "keeper", metav1.GetOptions{})
	if err != nil || p.Status.Phase != corev1.PodRunning {
		t.Errorf("the running pod did not survive the restarts: %v %v", err, p.Status.Phase)
	}
}

// Scenario 6: a ResourceQuota on requests.nvidia.com/vgpu rejects a pod
// over it at admission.
func TestResourceQuota(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "quota")
	rq := &corev1.ResourceQuota{
		ObjectMeta: metav1.ObjectMeta{Name: "gpus"},
		Spec:       corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{"requests.nvidia.com/vgpu": resource.MustParse("2")}},
	}
	if _, err := cs.CoreV1().ResourceQuotas(ns).Create(ctx, rq, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The controller manager fills in the quota's status; until then the
	// API server does not enforce it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		q, err := cs.CoreV1().ResourceQuotas(ns).Get(ctx, "gpus", metav1.GetOptions{})
		if err == nil && len(q.Status.Hard) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("quota status never filled in: is kube-controller-manager running?")
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, err := cs.CoreV1().Pods(ns).Create(ctx, pod("big", 3, "sleep 3600"), metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "exceeded quota") {
		t.Fatalf("a pod over the quota: %v, want an exceeded quota rejection", err)
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("small", 2, "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("a pod within the quota was rejected: %v", err)
	}
	waitRunning(t, ns, "small")
}

// Scenario 7: fake GPU workloads in pods' containers are attributed to
// their pods through the containers' real cgroups, throttled to their
// compute share there, and killed when over their memory.
func TestWorkloadsInPodsAreAttributedAndEnforced(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "enforce")
	// 2 of 4 slices: 20 GiB and half the GPU; it wants all of it.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("greedy", 2, "exec /bin/workload --demand 1 --memory-mib 1024")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := waitRunning(t, ns, "greedy")
	labels := map[string]string{"namespace": ns, "pod": "greedy", "container": "main"}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mfs := scrape(t)
		used, _ := value(mfs, "gpuslice_container_memory_used_bytes", labels)
		inForce, _ := value(mfs, "gpuslice_enforcement_enforced", map[string]string{"namespace": ns, "pod": "greedy", "container": "main", "resource": "compute", "reason": "enforced"})
		throttled, _ := value(mfs, "gpuslice_enforcement_throttled_seconds_total", labels)
		if used == 1<<30 && inForce == 1 && throttled > 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload in pod %s/greedy (uid %s) not attributed and throttled: used %v, in force %v, throttled %vs\n%s", ns, p.UID, used, inForce, throttled, c.AgentLogs())
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The agent attributed and throttled it from inside a private cgroup
	// namespace (StartAgent starts it in one), where the pod's cgroup path
	// reads relative to the agent's own.
	if !strings.Contains(c.AgentOutput(), "agent runs in a private cgroup namespace") {
		t.Errorf("the agent is not in a private cgroup namespace:\n%s", c.AgentLogs())
	}
	// Its measured share holds near its limit.
	// Judged by the work the workload got done; the agent's own figure is
	// logged beside it.
	share := workShare(t, ns, "greedy", 5*time.Second)
	t.Logf("greedy pod's share under strict by its own progress: %.1f%%, by the agent's busy-seconds %.1f%% (limit 50%%)", share*100, measuredShare(t, labels, 2*time.Second)*100)
	if share < 0.40 || share > 0.60 {
		t.Errorf("greedy pod used %.0f%% of the GPU, limit 50%%", share*100)
	}

	// 1 slice (10 GiB), a process holding 12 GiB: the watchdog kills it.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("hog", 1, "exec /bin/workload --demand 0.1 --memory-mib 12288")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	failed := waitPhase(t, ns, "hog", corev1.PodFailed)
	st := failed.Status.ContainerStatuses
	if len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 137 {
		t.Errorf("hog's container: %+v, want killed (exit 137)", st)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=hog"})
		found := false
		for _, e := range evs.Items {
			found = found || e.Reason == "GPUProcessKilled"
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no GPUProcessKilled event on the pod: %v %v", err, evs.Items)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// useDriverMemoryLimits restarts the agent on a fake driver that has
// per-cgroup memory limits, and back without them when the test ends.
func useDriverMemoryLimits(t *testing.T) {
	t.Helper()
	orig, err := os.ReadFile(c.FakeConfig)
	if err != nil {
		t.Fatal(err)
	}
	restart := func(cfg []byte) {
		t.Helper()
		if err := os.WriteFile(c.FakeConfig, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		c.KillAgent()
		if err := c.StartAgent(); err != nil {
			t.Fatal(err)
		}
		waitAgentRegistrations(t, 1)
		waitAllocatable(t, 8)
	}
	restart(append(append([]byte(nil), orig...), "driverMemoryLimits: true\n"...))
	t.Cleanup(func() { restart(orig) })
	if !strings.Contains(c.AgentLogs(), "driver GPU memory limits in force") {
		t.Fatalf("the agent did not take up the driver's limits:\n%s", c.AgentLogs())
	}
}

// Scenario 7, driver tier: with a driver that has per-cgroup memory limits
// (the fake, configured so), the agent limits each container's real leaf
// cgroup as runc creates it, and an allocation past the limit fails inside
// the container instead of the process being killed afterwards.
func TestDriverMemoryLimitsInRealContainers(t *testing.T) {
	useDriverMemoryLimits(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "driver")
	// 1 slice: 10 GiB. The process asks for 12 GiB.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("hog", 1, "exec /bin/workload --demand 0.1 --memory-mib 12288")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	failed := waitPhase(t, ns, "hog", corev1.PodFailed)
	st := failed.Status.ContainerStatuses
	if len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 2 {
		t.Errorf("hog's container: %+v, want its own exit 2 on out-of-memory", st)
	}
	if logs := podLogs(t, ns, "hog"); !strings.Contains(logs, "out of memory") {
		t.Errorf("hog's log has no out-of-memory error:\n%s", logs)
	}
	// The limit was set on the container's leaf cgroup when runc made it,
	// and cleared when it emptied.
	logs := c.AgentLogs()
	if !strings.Contains(logs, "driver GPU memory limit set") || !strings.Contains(logs, string(failed.UID)) {
		t.Errorf("no driver limit set on the pod's cgroup (pod %s):\n%s", failed.UID, logs)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, _ := value(scrape(t), "gpuslice_enforcement_driver_memory_limit_operations_total", map[string]string{"result": "cleared"})
		if v >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the limit was never cleared:\n%s", c.AgentLogs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// One limit in the pod: its container's. Not the pod's sandbox, which
	// holds no slices (a limit is a reservation on a dmem driver).
	set := 0
	for _, l := range strings.Split(c.AgentOutput(), "\n") {
		if strings.Contains(l, "driver GPU memory limit set") && strings.Contains(l, string(failed.UID)) {
			set++
		}
	}
	if set != 1 {
		t.Errorf("%d driver limits set in a pod with one container holding slices; want 1\n%s", set, c.AgentLogs())
	}
	if v, _ := value(scrape(t), "gpuslice_enforcement_kills_total", map[string]string{"pod": "hog"}); v != 0 {
		t.Errorf("the watchdog killed %v processes: the driver should have refused the allocation", v)
	}
}

// Scenario 8, unauthorized use: a pod that holds no slices but reaches a
// GPU anyway (here it names the GPU itself, as NVIDIA_VISIBLE_DEVICES=all
// under a default NVIDIA runtime would) is killed, with an Event saying
// why; the kubelet's checkpoint is the evidence that it holds none.
func TestGPUUseWithoutSlicesInRealContainers(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "intruder")
	uuid := ""
	for _, m := range scrape(t)["gpuslice_device_info"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "uuid" && uuid == "" {
				uuid = l.GetValue()
			}
		}
	}
	if uuid == "" {
		t.Fatal("no GPU in the agent's metrics")
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("intruder", 0, "exec /bin/workload --gpu "+uuid+" --demand 0.5 --memory-mib 512")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	failed := waitPhase(t, ns, "intruder", corev1.PodFailed)
	st := failed.Status.ContainerStatuses
	if len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 137 {
		t.Errorf("intruder's container: %+v, want killed (exit 137)", st)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=intruder"})
		found := false
		for _, e := range evs.Items {
			found = found || e.Reason == "GPUUseUnauthorized"
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no GPUUseUnauthorized event on the pod: %v %v\n%s", err, evs.Items, c.AgentLogs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
