package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// requireDRA skips a DRA scenario on a cluster without DRA mode (a runtime
// without CDI, or Kubernetes before 1.36), saying why; with
// GPUSLICE_REQUIRE_DRA set it fails instead.
func requireDRA(t *testing.T) {
	t.Helper()
	if c.DRA() {
		// Registered first, so it runs last, after the scenario's
		// namespace is gone: its claims let go of their GPUs before the
		// next scenario, whose nvidia.com/vgpu pods would be refused them.
		t.Cleanup(func() { waitPreparedOnDisk(t, 0, 0) })
		return
	}
	if os.Getenv("GPUSLICE_REQUIRE_DRA") != "" {
		t.Fatalf("GPUSLICE_REQUIRE_DRA is set but the cluster is not in DRA mode: %s", draOff)
	}
	t.Skipf("DRA mode off: %s", draOff)
}

// draOff says why TestMain did not start the cluster in DRA mode.
var draOff string

// claimTemplate is a ResourceClaimTemplate for one device of gpuslice's
// class with the capacity given (compute in slices, memory as a quantity;
// empty for the default) and CEL selectors.
func claimTemplate(name, compute, memory string, cel ...string) *resourceapi.ResourceClaimTemplate {
	req := resourceapi.ExactDeviceRequest{DeviceClassName: dra.DriverName, Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{}}}
	if compute != "" {
		req.Capacity.Requests[dra.CapacityCompute] = resource.MustParse(compute)
	}
	if memory != "" {
		req.Capacity.Requests[dra.CapacityMemory] = resource.MustParse(memory)
	}
	for _, e := range cel {
		req.Selectors = append(req.Selectors, resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{Expression: e}})
	}
	return &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &req}},
		}}},
	}
}

// createTemplates creates ResourceClaimTemplates in ns.
func createTemplates(t *testing.T, ns string, tpls ...*resourceapi.ResourceClaimTemplate) {
	t.Helper()
	cs := c.API.Clientset(t)
	for _, tpl := range tpls {
		if _, err := cs.ResourceV1().ResourceClaimTemplates(ns).Create(context.Background(), tpl, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// onGPU is a CEL selector for the GPU with NVML index i.
func onGPU(i int) string {
	return fmt.Sprintf(`device.attributes["%s"].index == %d`, dra.DriverName, i)
}

// claimPod is pod() holding a claim from template instead of slices.
func claimPod(name, template, script string) *corev1.Pod {
	p := pod(name, 0, script)
	p.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To(template)}}
	p.Spec.Containers[0].Resources.Claims = []corev1.ResourceClaim{{Name: "gpu"}}
	return p
}

// ensureDeviceClass creates gpuslice's DeviceClass, as the chart does.
func ensureDeviceClass(t *testing.T) {
	t.Helper()
	cs := c.API.Clientset(t)
	_, err := cs.ResourceV1().DeviceClasses().Get(context.Background(), dra.DriverName, metav1.GetOptions{})
	if err == nil {
		return
	}
	class := &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: dra.DriverName}, Spec: resourceapi.DeviceClassSpec{
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: fmt.Sprintf(`device.driver == %q && device.attributes[%q].kind == %q`, dra.DriverName, dra.DriverName, dra.KindGPU)}}},
	}}
	if _, err := cs.ResourceV1().DeviceClasses().Create(context.Background(), class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// containerEnv is the env the pod's main container printed.
func containerEnv(t *testing.T, ns, name string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for line := range strings.SplitSeq(podLogs(t, ns, name), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

// gpuUUIDs are the node's GPUs by index, from its ResourceSlice.
func gpuUUIDs(t *testing.T) map[int]string {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		list, err := cs.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
		out := map[int]string{}
		if err == nil {
			for _, s := range list.Items {
				for _, d := range s.Spec.Devices {
					if s.Spec.Driver == dra.DriverName && d.Attributes[dra.AttrIndex].IntValue != nil && d.Attributes[dra.AttrUUID].StringValue != nil {
						out[int(*d.Attributes[dra.AttrIndex].IntValue)] = *d.Attributes[dra.AttrUUID].StringValue
					}
				}
			}
		}
		if len(out) == 2 {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ResourceSlice with the node's 2 GPUs after 60s: %v %v\n%s", list, err, c.DRADriverLogs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestDRAClaimsShareAGPU: two pods with claims for 1 and 3 slices of a
// 4-slice GPU share it, each seeing its GPU and its limits in the same
// environment as device-plugin mode; a third needing one more slice of
// that GPU stays Pending with the scheduler's reason; a claim by memory
// alone lands on the GPU with room. The agent reports each claim's pod
// with its slices, a greedy claim holder is throttled to its share, and a
// process over its claim's memory is killed. An nvidia.com/vgpu pod is
// then refused: neither front end is handed a GPU the other holds.
func TestDRAClaimsShareAGPU(t *testing.T) {
	requireDRA(t)
	ensureDeviceClass(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "dra-share")
	uuids := gpuUUIDs(t)
	createTemplates(t, ns,
		claimTemplate("one", "1", "10Gi", onGPU(0)),
		claimTemplate("three", "3", "30Gi", onGPU(0)),
		claimTemplate("ten-gib", "", "10Gi"),
	)
	for _, p := range []*corev1.Pod{
		withHostPID(claimPod("greedy", "one", "env; exec /bin/workload --demand 1 --memory-mib 512")),
		claimPod("three", "three", "env; sleep 3600"),
	} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitRunning(t, ns, "greedy")
	waitRunning(t, ns, "three")
	for name, want := range map[string][3]string{"greedy": {"1", "0.25", "10737418240"}, "three": {"3", "0.75", "32212254720"}} {
		env := containerEnv(t, ns, name)
		if env["NVIDIA_VISIBLE_DEVICES"] != uuids[0] || env["GPUSLICE_SLICES"] != want[0] || env["GPUSLICE_COMPUTE_LIMIT_RATIO"] != want[1] || env["GPUSLICE_MEMORY_LIMIT_BYTES"] != want[2] {
			t.Errorf("pod %s's env %v; want GPU %s, %s slices, ratio %s, %s bytes", name, env, uuids[0], want[0], want[1], want[2])
		}
	}

	// Each claim shows its share in its status, written by the driver.
	claims, err := cs.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range claims.Items {
		share := waitClaimShare(t, ns, cl.Name)
		if share.UUID != uuids[0] || share.SlicesTotal != 4 || (share.Slices != 1 && share.Slices != 3) || share.MemoryBytes != uint64(share.Slices)*10<<30 {
			t.Errorf("claim %s's status shows %+v; want 1 or 3 of GPU 0's 4 slices with 10 GiB each", cl.Name, share)
		}
	}
	// And, from the agent through the driver, that the node holds them:
	// the greedy claim's once its process is seen and throttled.
	for _, cl := range claims.Items {
		cond := waitClaimCondition(t, ns, cl.Name, dra.ConditionEnforced, metav1.ConditionTrue)
		t.Logf("claim %s: %s %s: %s", cl.Name, cond.Type, cond.Reason, cond.Message)
	}

	// GPU 0 has no slice left: a claim for one more stays Pending.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod("late", "one", "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	msg := waitUnschedulable(t, ns, "late", "")
	t.Logf("the scheduler on the third claim: %s", msg)
	if !strings.Contains(msg, "cannot allocate all claims") {
		t.Errorf("the third claim's pod is unschedulable for %q, want the DRA allocator's reason", msg)
	}
	// By memory alone: GPU 1 has room.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod("by-memory", "ten-gib", "env; sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "by-memory")
	if env := containerEnv(t, ns, "by-memory"); env["NVIDIA_VISIBLE_DEVICES"] != uuids[1] || env["GPUSLICE_MEMORY_LIMIT_BYTES"] != "10737418240" {
		t.Errorf("the memory claim's env %v; want GPU %s and 10 GiB", env, uuids[1])
	}

	// The agent: each claim's pod with its slices; the greedy one (1 of 4
	// slices, wanting the whole GPU) attributed and throttled.
	labels := map[string]string{"namespace": ns, "pod": "greedy", "container": "main"}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mfs := scrape(t)
		slices, _ := value(mfs, "gpuslice_container_slices", labels)
		threeSlices, _ := value(mfs, "gpuslice_container_slices", map[string]string{"namespace": ns, "pod": "three"})
		used, _ := value(mfs, "gpuslice_container_memory_used_bytes", labels)
		throttled, _ := value(mfs, "gpuslice_enforcement_throttled_seconds_total", labels)
		claimed, _ := value(mfs, "gpuslice_container_claim_info", map[string]string{"namespace": ns, "pod": "greedy", "claim_namespace": ns})
		if slices == 1 && threeSlices == 3 && used == 512<<20 && throttled > 1 && claimed == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("claims not accounted: greedy slices %v, used %v, throttled %vs, claim_info %v; three's slices %v\n%s", slices, used, throttled, claimed, threeSlices, c.AgentLogs())
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Judged by the work the workload got done; the agent's own figure is
	// logged beside it.
	share := workShare(t, ns, "greedy", 5*time.Second)
	t.Logf("greedy claim's share under strict by its own progress: %.1f%%, by the agent's busy-seconds %.1f%% (its claim: 25%%)", share*100, measuredShare(t, labels, 2*time.Second)*100)
	if share < 0.15 || share > 0.35 {
		t.Errorf("greedy claim used %.0f%% of the GPU, its claim is 25%%", share*100)
	}
	// A claim of 10 GiB whose process holds 12 GiB: the watchdog kills it.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(claimPod("hog", "ten-gib", "exec /bin/workload --demand 0.1 --memory-mib 12288")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	failed := waitPhase(t, ns, "hog", corev1.PodFailed)
	if st := failed.Status.ContainerStatuses; len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 137 {
		t.Errorf("the memory hog's container: %+v, want killed (exit 137)", st)
	}
	// Both GPUs serve claims now: the agent offers their slices as
	// Unhealthy, so the node has no nvidia.com/vgpu to allocate and an
	// nvidia.com/vgpu pod waits for the scheduler, never admitted and then
	// refused (UnexpectedAdmissionError, before).
	waitAllocatable(t, 0)
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("vgpu", 1, "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if msg := waitUnschedulable(t, ns, "vgpu", ""); !strings.Contains(msg, "Insufficient nvidia.com/vgpu") {
		t.Errorf("the nvidia.com/vgpu pod is unschedulable for %q, want the node's lack of nvidia.com/vgpu", msg)
	}
	for line := range strings.SplitSeq(c.AgentOutput(), "\n") {
		if strings.Contains(line, "unauthorized gpu use") && strings.Contains(line, ns) {
			t.Errorf("the agent judged a claim holder's GPU use unauthorized: %s", line)
		}
	}
}

// waitClaimShare waits until a claim's status shows the driver's device
// with the Prepared condition, and returns the share it shows.
func waitClaimShare(t *testing.T, ns, name string) dra.ShareStatus {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		cl, err := cs.ResourceV1().ResourceClaims(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && len(cl.Status.Devices) == 1 && cl.Status.Devices[0].Data != nil && len(cl.Status.Devices[0].Conditions) > 0 &&
			cl.Status.Devices[0].Conditions[0].Type == dra.ConditionPrepared {
			var share dra.ShareStatus
			if err := json.Unmarshal(cl.Status.Devices[0].Data.Raw, &share); err != nil {
				t.Fatal(err)
			}
			return share
		}
		if time.Now().After(deadline) {
			var got any
			if cl != nil {
				got = cl.Status.Devices
			}
			t.Fatalf("claim %s/%s never showed its share: %v %+v\n%s", ns, name, err, got, c.DRADriverLogs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitClaimCondition waits until a claim's status shows the driver's
// device with the condition of type kind in status, and returns it.
func waitClaimCondition(t *testing.T, ns, name, kind string, status metav1.ConditionStatus) metav1.Condition {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(60 * time.Second)
	var last []metav1.Condition
	for {
		cl, err := cs.ResourceV1().ResourceClaims(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && len(cl.Status.Devices) == 1 {
			last = cl.Status.Devices[0].Conditions
			for _, cond := range last {
				if cond.Type == kind && cond.Status == status {
					return cond
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("claim %s/%s never showed %s=%s: %v, last %+v\n%s", ns, name, kind, status, err, last, c.DRADriverLogs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deviceTaint is gpuslice's taint on a device of the node's slice, as
// "value/effect" ("" for none).
func deviceTaint(t *testing.T, device string) string {
	t.Helper()
	list, err := c.API.Clientset(t).ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		for _, d := range s.Spec.Devices {
			if s.Spec.Driver != dra.DriverName || d.Name != device {
				continue
			}
			for _, taint := range d.Taints {
				if taint.Key == dra.UnhealthyTaintKey {
					return taint.Value + "/" + string(taint.Effect)
				}
			}
		}
	}
	return ""
}

func waitDeviceTaint(t *testing.T, device, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for got := deviceTaint(t, device); got != want; got = deviceTaint(t, device) {
		if time.Now().After(deadline) {
			t.Fatalf("device %s tainted %q, want %q\n%s", device, got, want, c.DRADriverLogs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitClaimHealth waits until the pod's container shows its claim's device
// with the given health (allocatedResourcesStatus, fed by the driver's
// health stream).
func waitClaimHealth(t *testing.T, ns, name string, want corev1.ResourceHealthStatus) {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		var got []corev1.ResourceStatus
		if err == nil && len(p.Status.ContainerStatuses) == 1 {
			got = p.Status.ContainerStatuses[0].AllocatedResourcesStatus
		}
		for _, r := range got {
			for _, h := range r.Resources {
				if strings.HasPrefix(string(r.Name), "claim:") && h.Health == want {
					t.Logf("pod %s/%s: %s %s %s", ns, name, r.Name, h.ResourceID, h.Health)
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s/%s never showed its claim %s: %v %+v", ns, name, want, err, got)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fakeFaults returns a function that sets the fake node's faults (YAML
// appended to its file; "" for none), and puts the file back as it was
// when the test ends.
func fakeFaults(t *testing.T) func(faults string) {
	t.Helper()
	orig, err := os.ReadFile(c.FakeConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(c.FakeConfig, orig, 0o600) })
	return func(faults string) {
		t.Helper()
		if err := os.WriteFile(c.FakeConfig, append(append([]byte(nil), orig...), faults...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDRAXIDTaintsTheDevice: a recoverable XID on GPU 1 taints its device
// NoSchedule, so a new claim for it stays Pending, while the pod already
// holding a claim on it runs on and is told in its status; recovery
// removes the taint and the new claim is served.
func TestDRAXIDTaintsTheDevice(t *testing.T) {
	requireDRA(t)
	ensureDeviceClass(t)
	fault := fakeFaults(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "dra-xid")
	createTemplates(t, ns, claimTemplate("gpu1", "1", "", onGPU(1)))
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod("holder", "gpu1", "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "holder")
	waitDeviceTaint(t, "gpu-1", "")
	start := time.Now()
	fault("faults:\n  gpus:\n    - index: 1\n      xid: 94\n")
	waitDeviceTaint(t, "gpu-1", "xid-94/NoSchedule")
	t.Logf("gpu-1 tainted %v after the XID", time.Since(start).Round(time.Millisecond))
	if deviceTaint(t, "gpu-0") != "" {
		t.Error("the healthy GPU was tainted too")
	}
	waitClaimHealth(t, ns, "holder", corev1.ResourceHealthStatusUnhealthy)
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod("new", "gpu1", "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	msg := waitUnschedulable(t, ns, "new", "")
	t.Logf("the scheduler on a claim for the tainted GPU: %s", msg)

	fault("")
	waitDeviceTaint(t, "gpu-1", "")
	waitRunning(t, ns, "new")
	waitClaimHealth(t, ns, "holder", corev1.ResourceHealthStatusHealthy)
	if p := waitRunning(t, ns, "holder"); p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the holder restarted: %+v", p.Status.ContainerStatuses[0])
	}
}

// TestDRAFatalXIDEvicts: a fatal XID (79, the GPU fell off the bus) on
// GPU 1 taints its device NoExecute, and kube-controller-manager's device
// taint eviction controller deletes the pod whose claim uses it, while the
// pod on GPU 0 runs on; recovery removes the taint.
func TestDRAFatalXIDEvicts(t *testing.T) {
	requireDRA(t)
	ensureDeviceClass(t)
	fault := fakeFaults(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "dra-fatal")
	createTemplates(t, ns, claimTemplate("gpu0", "1", "", onGPU(0)), claimTemplate("gpu1", "1", "", onGPU(1)))
	for name, tmpl := range map[string]string{"on-gpu1": "gpu1", "on-gpu0": "gpu0"} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod(name, tmpl, "sleep 3600"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitRunning(t, ns, "on-gpu1")
	waitRunning(t, ns, "on-gpu0")
	waitDeviceTaint(t, "gpu-1", "")
	start := time.Now()
	fault("faults:\n  gpus:\n    - index: 1\n      xid: 79\n")
	waitDeviceTaint(t, "gpu-1", "xid-79/NoExecute")
	waitGone(t, "the pod on the GPU that fell off the bus", func() (int, error) {
		_, err := cs.CoreV1().Pods(ns).Get(ctx, "on-gpu1", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return 0, nil
		}
		return 1, err
	})
	t.Logf("the pod on gpu-1 was evicted %v after the XID", time.Since(start).Round(time.Millisecond))
	if p := waitRunning(t, ns, "on-gpu0"); p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the pod on the healthy GPU restarted: %+v", p.Status.ContainerStatuses[0])
	}
	if deviceTaint(t, "gpu-0") != "" {
		t.Error("the healthy GPU was tainted too")
	}
	fault("")
	waitDeviceTaint(t, "gpu-1", "")
}

// preparedOnDisk is what the driver left on the node: its record's claims
// and the CDI specs.
func preparedOnDisk(t *testing.T) (claims int, specs int) {
	t.Helper()
	data, err := os.ReadFile(c.PreparedClaims)
	if err == nil {
		var r struct {
			Claims map[string]any `json:"claims"`
		}
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatal(err)
		}
		claims = len(r.Claims)
	}
	entries, _ := os.ReadDir(c.CDIDir)
	return claims, len(entries)
}

func waitPreparedOnDisk(t *testing.T, claims, specs int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		gc, gs := preparedOnDisk(t)
		if gc == claims && gs == specs {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the driver's record holds %d claims and %d CDI specs, want %d and %d\n%s", gc, gs, claims, specs, c.DRADriverLogs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestDRARestarts: the driver killed and the kubelet restarted while a pod
// holds a claim, then the agent restarted: the pod runs on with its
// device, nothing is prepared twice, the restarted driver still counts the
// claim against its GPU, and a claim let go leaves nothing behind.
func TestDRARestarts(t *testing.T) {
	requireDRA(t)
	ensureDeviceClass(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "dra-restart")
	waitPreparedOnDisk(t, 0, 0) // earlier scenarios' claims let go
	createTemplates(t, ns, claimTemplate("one", "1", "", onGPU(0)), claimTemplate("three", "3", "", onGPU(0)))
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod("first", "one", "env; sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "first")
	waitPreparedOnDisk(t, 1, 1)

	c.KillDRADriver()
	c.StopKubelet()
	if err := c.StartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StartDRADriver(); err != nil {
		t.Fatal(err)
	}
	c.StopAgent()
	if err := c.StartAgent(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(c.DRADriverLogs(), `"msg":"serving"`); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the restarted driver is not serving:\n%s", c.DRADriverLogs())
		}
	}
	if !strings.Contains(c.DRADriverLogs(), `"claims_prepared":1`) {
		t.Errorf("the restarted driver did not reload the prepared claim:\n%s", c.DRADriverLogs())
	}
	// Three more slices of GPU 0 fit beside the first's one; a fourth pod
	// asking for one more does not.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod("second", "three", "env; sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "second")
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod("third", "one", "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// It must not run while GPU 0 is full: the scheduler leaves it
	// unschedulable, or, should a claim be allocated past the device's
	// capacity anyway, the driver's ledger refuses to prepare it.
	waitUnschedulable(t, ns, "third", "cannot allocate all claims")
	time.Sleep(5 * time.Second)
	if p, err := cs.CoreV1().Pods(ns).Get(ctx, "third", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodPending {
		t.Errorf("a claim past GPU 0's capacity: pod %v, %v; want Pending", p.Status.Phase, err)
	} else if p.Spec.NodeName != "" {
		t.Logf("the scheduler allocated a claim past GPU 0's capacity; the driver refused to prepare it:\n%s", c.DRADriverLogs())
	}
	waitPreparedOnDisk(t, 2, 2)
	if p := waitRunning(t, ns, "first"); p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the first pod restarted: %+v", p.Status.ContainerStatuses[0])
	}
	// The restarted agent reads the record: both claims' pods accounted.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mfs := scrape(t)
		a, _ := value(mfs, "gpuslice_container_slices", map[string]string{"namespace": ns, "pod": "first"})
		b, _ := value(mfs, "gpuslice_container_slices", map[string]string{"namespace": ns, "pod": "second"})
		if a == 1 && b == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted agent reports %v and %v slices, want 1 and 3\n%s", a, b, c.AgentLogs())
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Let go of the first: its claim is unprepared, its spec removed, and
	// the third pod gets its slice.
	zero := int64(0)
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "first", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "third")
	waitPreparedOnDisk(t, 2, 2)
}

// checkChartDRA: with dra.enabled, the chart's own driver DaemonSet (not
// privileged, no capability) serves a claim, and the chart's agent
// (--dra) reports the claim's pod; the claim is let go afterwards, before
// the chart test's nvidia.com/vgpu pods.
func checkChartDRA(t *testing.T, metrics string) {
	t.Helper()
	requireDRA(t)
	ensureDeviceClass(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	driver := waitComponentPod(t, "dra-driver")
	if sc := driver.Spec.Containers[0].SecurityContext; sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 {
		t.Errorf("the chart's driver security context: %+v, want unprivileged with no capability", sc)
	}
	ns := newNamespace(t, "helm-dra")
	createTemplates(t, ns, claimTemplate("two", "2", ""))
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod("claim", "two", "env; sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "claim")
	if env := containerEnv(t, ns, "claim"); env["GPUSLICE_SLICES"] != "2" || env["NVIDIA_VISIBLE_DEVICES"] == "" {
		t.Errorf("the claim's env %v; want 2 slices of a GPU", env)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := false
		for _, mf := range promtest.Scrape(t, metrics) {
			for _, m := range mf.GetMetric() {
				if mf.GetName() != "gpuslice_container_slices" {
					continue
				}
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				ok = ok || (labels["namespace"] == ns && labels["pod"] == "claim" && m.GetGauge().GetValue() == 2)
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the chart's agent does not report the claim's pod with 2 slices")
		}
		time.Sleep(500 * time.Millisecond)
	}
	zero := int64(0)
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "claim", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
}

// waitComponentPod waits for a ready pod of the chart's component.
func waitComponentPod(t *testing.T, component string) *corev1.Pod {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pods, err := cs.CoreV1().Pods(helmNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=" + component})
		if err == nil {
			for i := range pods.Items {
				if p := &pods.Items[i]; p.DeletionTimestamp == nil && podReady(p) {
					return p
				}
			}
		}
		if time.Now().After(deadline) {
			evs, _ := cs.CoreV1().Events(helmNamespace).List(context.Background(), metav1.ListOptions{})
			var b strings.Builder
			for _, e := range evs.Items {
				if strings.Contains(e.InvolvedObject.Name, component) {
					fmt.Fprintf(&b, "%s %s: %s\n", e.InvolvedObject.Name, e.Reason, e.Message)
				}
			}
			t.Fatalf("no ready %s pod from the chart: %v; events:\n%s", component, err, b.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestDRADriverMemoryLimits: on a driver with per-cgroup memory limits, a
// container holding a claim gets its claim's memory as the driver's limit
// when runc creates its cgroup, as a container holding slices does, so an
// allocation past it fails inside the container (the workload's own exit
// 2) instead of the watchdog killing the process afterwards.
func TestDRADriverMemoryLimits(t *testing.T) {
	requireDRA(t)
	ensureDeviceClass(t)
	useDriverMemoryLimits(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "dra-driver")
	createTemplates(t, ns, claimTemplate("ten-gib", "1", "10Gi"))
	// A claim of 10 GiB; the process asks for 12 GiB.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(claimPod("hog", "ten-gib", "exec /bin/workload --demand 0.1 --memory-mib 12288")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	failed := waitPhase(t, ns, "hog", corev1.PodFailed)
	if st := failed.Status.ContainerStatuses; len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 2 {
		t.Errorf("the claim hog's container: %+v, want its own exit 2 on out-of-memory", st)
	}
	if logs := podLogs(t, ns, "hog"); !strings.Contains(logs, "out of memory") {
		t.Errorf("the claim hog's log has no out-of-memory error:\n%s", logs)
	}
	set := 0
	for line := range strings.SplitSeq(c.AgentOutput(), "\n") {
		if strings.Contains(line, "driver GPU memory limit set") && strings.Contains(line, string(failed.UID)) && strings.Contains(line, "10737418240") {
			set++
		}
	}
	if set != 1 {
		t.Errorf("%d driver limits of 10 GiB set on the claim holder's cgroup, want 1\n%s", set, c.AgentLogs())
	}
	if v, _ := value(scrape(t), "gpuslice_enforcement_kills_total", map[string]string{"pod": "hog"}); v != 0 {
		t.Errorf("the watchdog killed %v processes: the driver should have refused the allocation", v)
	}
}

// TestDRAExtendedResource: with the driver publishing slice devices, a
// DeviceClass mapping nvidia.com/vgpu to them, and the agent advertising
// no slices, a pod asking for nvidia.com/vgpu: 2 (the device-plugin
// spelling, unchanged) is served through DRA by the real scheduler: two
// slices of one GPU, the same environment and limits, throttled to its
// share. A GPU serves slices or shares, never both: a share claim on the
// GPU the slices are on stays Pending, one on the other GPU runs, and a
// pod then asking for more slices than are left stays Pending.
func TestDRAExtendedResource(t *testing.T) {
	requireDRA(t)
	ensureDeviceClass(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	vgpuClass := &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: "vgpu.gpuslice.io"}, Spec: resourceapi.DeviceClassSpec{
		ExtendedResourceName: ptr.To("nvidia.com/vgpu"),
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
			Expression: fmt.Sprintf(`device.driver == %q && device.attributes[%q].kind == %q`, dra.DriverName, dra.DriverName, dra.KindSlice)}}},
	}}
	if _, err := cs.ResourceV1().DeviceClasses().Create(ctx, vgpuClass, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.ResourceV1().DeviceClasses().Delete(context.Background(), vgpuClass.Name, metav1.DeleteOptions{})
	})
	if err := c.RestartDRADriver("--dra-extended-resource"); err != nil {
		t.Fatal(err)
	}
	agentArgs := c.AgentArgs
	c.StopAgent()
	c.AgentArgs = append(append([]string(nil), agentArgs...), "--dra-extended-resource")
	if err := c.StartAgent(); err != nil {
		t.Fatal(err)
	}
	// Registered last, run first: back as the tier runs, once this
	// test's namespace (registered below) is gone.
	t.Cleanup(func() {
		c.StopAgent()
		c.AgentArgs = agentArgs
		if err := c.StartAgent(); err != nil {
			t.Error(err)
		}
		if err := c.RestartDRADriver(); err != nil {
			t.Error(err)
		}
		waitAllocatable(t, 8)
	})
	waitAllocatable(t, 0)
	uuids := gpuUUIDs(t)
	waitFor(t, "the slice devices published", 30*time.Second, func() bool {
		list, err := cs.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		n := 0
		for _, s := range list.Items {
			for _, d := range s.Spec.Devices {
				if d.Attributes[dra.AttrKind].StringValue != nil && *d.Attributes[dra.AttrKind].StringValue == dra.KindSlice {
					n++
				}
			}
		}
		return err == nil && n == 8
	})

	ns := newNamespace(t, "dra-vgpu")
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("two", 2, "env; exec /bin/workload --demand 1 --memory-mib 512")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	two := waitRunning(t, ns, "two")
	if two.Status.ExtendedResourceClaimStatus == nil {
		t.Errorf("the pod ran without an extended-resource claim: %+v", two.Status)
	} else {
		t.Logf("nvidia.com/vgpu: 2 served by claim %s", two.Status.ExtendedResourceClaimStatus.ResourceClaimName)
	}
	env := containerEnv(t, ns, "two")
	gpu := env["NVIDIA_VISIBLE_DEVICES"]
	if (gpu != uuids[0] && gpu != uuids[1]) || env["GPUSLICE_SLICES"] != "2" || env["GPUSLICE_COMPUTE_LIMIT_RATIO"] != "0.5" || env["GPUSLICE_MEMORY_LIMIT_BYTES"] != "21474836480" {
		t.Errorf("the pod's env %v; want one GPU, 2 slices, ratio 0.5, 20 GiB", env)
	}
	labels := map[string]string{"namespace": ns, "pod": "two", "container": "main"}
	waitFor(t, "the agent accounting the pod at 2 slices", 30*time.Second, func() bool {
		slices, _ := value(scrape(t), "gpuslice_container_slices", labels)
		return slices == 2
	})
	share := workShare(t, ns, "two", 5*time.Second)
	t.Logf("the greedy nvidia.com/vgpu: 2 pod's share under strict by its own progress: %.1f%%, by the agent's busy-seconds %.1f%% (its slices: 50%%)", share*100, measuredShare(t, labels, 2*time.Second)*100)
	// By its own progress this pod asks for GPU time about 59% of the
	// time while the agent's busy-seconds read 50% (58.7% and 59.1% over
	// two runs; the other two throttle checks agree within 0.2 points).
	// The workload counts time asked; the fake GPU serves every workload
	// on a GPU in proportion when together they ask for more than it
	// holds, and the agent counts time served. Which other workload shares
	// this GPU here is not established: recorded in issue 27's note, the
	// bound leaves room for it meanwhile.
	if share < 0.4 || share > 0.65 {
		t.Errorf("the pod used %.0f%% of the GPU, its 2 of 4 slices are 50%%", share*100)
	}

	// Shares: not on the GPU serving slices, yes on the other.
	slicesOn, other := 0, 1
	if gpu == uuids[1] {
		slicesOn, other = 1, 0
	}
	createTemplates(t, ns,
		claimTemplate("same-gpu", "1", "10Gi", onGPU(slicesOn)),
		claimTemplate("other-gpu", "1", "10Gi", onGPU(other)),
	)
	for _, p := range []*corev1.Pod{claimPod("share-same", "same-gpu", "sleep 3600"), claimPod("share-other", "other-gpu", "sleep 3600")} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitRunning(t, ns, "share-other")
	msg := waitUnschedulable(t, ns, "share-same", "")
	t.Logf("a share of the GPU serving slices: %s", msg)
	// Two slices are left on the first GPU, none on the one serving a
	// share: four more slices do not fit.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("four", 4, "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	msg = waitUnschedulable(t, ns, "four", "")
	t.Logf("nvidia.com/vgpu: 4 with two slices left: %s", msg)
	// The two left fit, on the GPU already serving slices.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("last-two", 2, "env; sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "last-two")
	if env := containerEnv(t, ns, "last-two"); env["NVIDIA_VISIBLE_DEVICES"] != gpu || env["GPUSLICE_SLICES"] != "2" {
		t.Errorf("last-two's env %v; want the last 2 slices of GPU %s", env, gpu)
	}
	straddlesFirstFit(t, ns, uuids)
}

// straddlesFirstFit asserts the limitation docs/dra.md states: through
// extended-resource mapping, nvidia.com/vgpu: k is k slice devices taken
// first-fit with nothing tying them to one GPU, so on empty GPUs of 4
// slices, after a pod of 3, a pod of 2 gets the first GPU's last slice and
// one of the second GPU, though the second has 4 free. When this fails,
// Kubernetes (or gpuslice) keeps such a request on one GPU: update the
// docs.
func straddlesFirstFit(t *testing.T, ns string, uuids map[int]string) {
	t.Helper()
	cs := c.API.Clientset(t)
	ctx := context.Background()
	if err := cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "the namespace's pods and their claims", func() (int, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return -1, err
		}
		claims, err := cs.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return -1, err
		}
		return len(pods.Items) + len(claims.Items), nil
	})
	for _, p := range []struct {
		name   string
		slices int64
	}{{"first-three", 3}, {"then-two", 2}} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod(p.name, p.slices, "env; sleep 3600"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRunning(t, ns, p.name)
	}
	three, two := containerEnv(t, ns, "first-three")["NVIDIA_VISIBLE_DEVICES"], containerEnv(t, ns, "then-two")["NVIDIA_VISIBLE_DEVICES"]
	t.Logf("nvidia.com/vgpu: 3 then 2 on two empty GPUs of 4 slices: %s, then %s", three, two)
	if strings.Contains(three, ",") || !strings.Contains(two, ",") {
		t.Errorf("3 slices on %q, then 2 on %q: docs/dra.md says the 3 take one GPU and the 2 straddle both (of %v); update it", three, two, uuids)
	}
}

// TestDRAClaimAfterAVGPUPod: a claim on a GPU whose slices an
// nvidia.com/vgpu pod holds is refused by the driver while the pod runs,
// and served once the pod is gone. The first driver read the device
// manager's checkpoint, where the kubelet keeps a deleted pod's entry until
// another device-plugin allocation: the claim still waited after 3 minutes.
// The driver now asks pod-resources, which lists active pods only.
func TestDRAClaimAfterAVGPUPod(t *testing.T) {
	requireDRA(t)
	ensureDeviceClass(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "dra-after-vgpu")
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("vgpu", 1, "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "vgpu")
	uuid := assignmentGPU(t, ns, "vgpu")
	index := -1
	for i, u := range gpuUUIDs(t) {
		if u == uuid {
			index = i
		}
	}
	if index < 0 {
		t.Fatalf("the vgpu pod's GPU %s is not in the ResourceSlice", uuid)
	}
	createTemplates(t, ns, claimTemplate("same-gpu", "1", "10Gi", onGPU(index)))
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, claimPod("claim", "same-gpu", "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// While the vgpu pod runs: refused by the driver, with the reason.
	waitFor(t, "the driver refusing the claim", 60*time.Second, func() bool {
		evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=claim"})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, "serves device-plugin slices") {
				return true
			}
		}
		return false
	})
	if p, err := cs.CoreV1().Pods(ns).Get(ctx, "claim", metav1.GetOptions{}); err != nil || p.Status.Phase == corev1.PodRunning {
		t.Fatalf("the claim ran on a GPU a vgpu pod holds: %v", err)
	}
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "vgpu", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the vgpu pod gone", 60*time.Second, func() bool {
		_, err := cs.CoreV1().Pods(ns).Get(ctx, "vgpu", metav1.GetOptions{})
		return err != nil
	})
	gone := time.Now()
	waitFor(t, "the claim on the GPU the vgpu pod held running", 3*time.Minute, func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "claim", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	t.Logf("a claim on GPU %d ran %v after the nvidia.com/vgpu pod that held it was gone", index, time.Since(gone).Round(100*time.Millisecond))
}
