package e2e

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/test/e2e/cluster"
)

// The MIG node: GPU 0 in MIG mode in a mixed layout, GPU 1 whole.
const (
	migBefore = `gpus:
- preset: H100-80GB
  mig:
    mode: enabled
    instances: [{profile: 3g.40gb, placement: 4}, {profile: 2g.20gb, placement: 0}, {profile: 1g.10gb, placement: 2}, {profile: 1g.10gb, placement: 3}]
- preset: H100-80GB
`
	// The 3g.40gb is destroyed, the others stay, three 1g.10gb are new.
	migAfter = `gpus:
- preset: H100-80GB
  mig:
    mode: enabled
    instances: [{profile: 2g.20gb, placement: 0}, {profile: 1g.10gb, placement: 2}, {profile: 1g.10gb, placement: 3}, {profile: 1g.10gb, placement: 4}, {profile: 1g.10gb, placement: 5}, {profile: 1g.10gb, placement: 6}]
- preset: H100-80GB
`
)

// TestMIGMixedNode: on a node with a GPU in MIG mode and a whole GPU, a
// pod written for NVIDIA's device plugin (nvidia.com/mig-1g.10gb) runs
// unchanged on its instance, an nvidia.com/vgpu pod runs on slices of the
// whole GPU only, the node has GFD's MIG labels, and a layout change
// re-offers what exists while the running MIG pod keeps its instance.
func TestMIGMixedNode(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	file := filepath.Join(c.Dir, "fakegpu-mig.yaml")
	writeMIGConfig(t, file, migBefore)
	restartAgentOffering(t, 4, "--fake-config="+file) // GPU 1's 4 slices alone
	ns := newNamespace(t, "mig")

	waitNodeResource(t, "nvidia.com/mig-1g.10gb", 2)
	waitNodeResource(t, "nvidia.com/mig-3g.40gb", 1)
	// The MIG pod runs a workload on its instance (hostPID: the fake
	// driver names host PIDs, as the real one does).
	mig := withHostPID(pod("mig", 0, "env; exec /bin/workload --demand 0.5 --memory-mib 512"))
	mig.Spec.Containers[0].Resources.Limits = corev1.ResourceList{"nvidia.com/mig-1g.10gb": *resource.NewQuantity(1, resource.DecimalSI)}
	whole := pod("whole", 2, "env; sleep 3600")
	for _, p := range []*corev1.Pod{mig, whole} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitRunning(t, ns, "mig")
	waitRunning(t, ns, "whole")
	devs := migDevices(t, migBefore)
	migEnv, wholeEnv := containerEnv(t, ns, "mig"), containerEnv(t, ns, "whole")
	instance := migEnv["NVIDIA_VISIBLE_DEVICES"]
	var destroyed string // the 3g.40gb, gone after the change
	held := false
	for _, in := range devs[0].MIG.Instances {
		held = held || (in.UUID == instance && in.Profile == "1g.10gb")
		if in.Profile == "3g.40gb" {
			destroyed = in.UUID
		}
	}
	if !held {
		t.Fatalf("the MIG pod sees NVIDIA_VISIBLE_DEVICES=%q, not a 1g.10gb instance of GPU 0", instance)
	}
	if _, ok := migEnv["GPUSLICE_SLICE_IDS"]; ok {
		t.Errorf("the MIG pod is told it holds slices: %v", migEnv)
	}
	if got := wholeEnv["NVIDIA_VISIBLE_DEVICES"]; got != devs[1].UUID {
		t.Errorf("the vgpu pod sees NVIDIA_VISIBLE_DEVICES=%q, want the whole GPU %s (never the MIG GPU)", got, devs[1].UUID)
	}

	// The agent reads the instance as a device of its own: the pod's
	// memory on it, its compute by GPM (an H100's), its profile.
	waitInstanceUse(t, "mig", instance, "1g.10gb", 512<<20)

	// GFD's MIG labels.
	want := map[string]string{
		"nvidia.com/mig.capable": "true", "nvidia.com/mig.strategy": "mixed",
		"nvidia.com/mig-1g.10gb.count": "2", "nvidia.com/mig-3g.40gb.count": "1", "nvidia.com/mig-2g.20gb.count": "1",
		"nvidia.com/mig-1g.10gb.multiprocessors": "16", "nvidia.com/mig-1g.10gb.slices.gi": "1", "nvidia.com/mig-1g.10gb.engines.copy": "1",
		"nvidia.com/mig-1g.10gb.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
	}
	waitFor(t, "GFD's MIG labels on the node", 30*time.Second, func() bool { return labelsMatch(t, want, nil) })

	// The layout changes: the 3g.40gb is destroyed.
	writeMIGConfig(t, file, migAfter)
	waitNodeResource(t, "nvidia.com/mig-3g.40gb", 0)
	waitNodeResource(t, "nvidia.com/mig-1g.10gb", 5)
	want["nvidia.com/mig-1g.10gb.count"] = "5"
	delete(want, "nvidia.com/mig-3g.40gb.count")
	waitFor(t, "the MIG labels after the change", 30*time.Second, func() bool {
		return labelsMatch(t, want, []string{"nvidia.com/mig-3g.40gb.count", "nvidia.com/mig-3g.40gb.memory"})
	})
	if p, err := cs.CoreV1().Pods(ns).Get(ctx, "mig", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodRunning {
		t.Errorf("the MIG pod after the layout change: %v %v", p.Status.Phase, err)
	}
	// Four new or free 1g.10gb run pods; the destroyed 3g.40gb takes none.
	big := pod("big", 0, "sleep 3600")
	big.Spec.Containers[0].Resources.Limits = corev1.ResourceList{"nvidia.com/mig-3g.40gb": *resource.NewQuantity(1, resource.DecimalSI)}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, big, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUnschedulable(t, ns, "big", "nvidia.com/mig-3g.40gb")
	more := pod("more", 0, "env; sleep 3600")
	more.Spec.Containers[0].Resources.Limits = corev1.ResourceList{"nvidia.com/mig-1g.10gb": *resource.NewQuantity(4, resource.DecimalSI)}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, more, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "more")
	got := strings.Split(containerEnv(t, ns, "more")["NVIDIA_VISIBLE_DEVICES"], ",")
	seen := map[string]bool{}
	for _, id := range got {
		if id == instance || id == destroyed || !strings.HasPrefix(id, "MIG-") || seen[id] {
			t.Errorf("the second MIG pod got %v: %s is not a free instance of the new layout", got, id)
		}
		seen[id] = true
	}
	if len(got) != 4 {
		t.Errorf("the second MIG pod got %v, want 4 instances", got)
	}
}

func writeMIGConfig(t *testing.T, path, cfg string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(cfg+"workloadDir: "+c.WorkloadDir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	// The stand-ins for the capability device nodes Allocate hands out.
	caps := filepath.Join(c.Dir, "dev", "nvidia-caps")
	if err := os.MkdirAll(caps, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range migDevices(t, cfg) {
		for _, in := range d.MIG.Instances {
			for _, minor := range []int{in.GICapMinor, in.CICapMinor} {
				node := filepath.Join(caps, fmt.Sprintf("nvidia-cap%d", minor))
				if _, err := os.Stat(node); err == nil {
					continue
				}
				if out, err := exec.Command("mknod", "-m", "666", node, "c", "511", fmt.Sprint(minor)).CombinedOutput(); err != nil {
					t.Fatalf("mknod %s: %v: %s", node, err, out)
				}
			}
		}
	}
}

// migDevices are the GPUs a fake config describes, as a fresh fake node
// built from it reports them (UUIDs derive from the config alone).
func migDevices(t *testing.T, cfg string) []nvml.Device {
	t.Helper()
	fc, err := fakegpu.Parse([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	n, err := fakegpu.New(fc)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := n.Devices()
	if err != nil {
		t.Fatal(err)
	}
	return devs
}

// waitNodeResource waits until the node's allocatable resource is n.
func waitNodeResource(t *testing.T, name corev1.ResourceName, n int64) {
	t.Helper()
	cs := c.API.Clientset(t)
	waitFor(t, fmt.Sprintf("allocatable %s = %d", name, n), 60*time.Second, func() bool {
		node, err := cs.CoreV1().Nodes().Get(context.Background(), cluster.NodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		q, ok := node.Status.Allocatable[name]
		return (ok && q.Value() == n) || (!ok && n == 0)
	})
}

// labelsMatch reports whether the node has every want label and none of
// gone.
func labelsMatch(t *testing.T, want map[string]string, gone []string) bool {
	t.Helper()
	node, err := c.API.Clientset(t).CoreV1().Nodes().Get(context.Background(), cluster.NodeName, metav1.GetOptions{})
	if err != nil {
		return false
	}
	for k, v := range want {
		if node.Labels[k] != v {
			return false
		}
	}
	for _, k := range gone {
		if _, ok := node.Labels[k]; ok {
			return false
		}
	}
	return true
}

// TestDRAMIGClaim: with --mig-strategy=dra the DRA driver serves the MIG
// instances, each a device of its own (class mig.gpuslice.io, as the chart
// makes it): a claim for a 1g.10gb instance runs on one, with its MIG UUID
// and the instance's memory as its limit, and the agent lists the claim's
// container on the instance with its use unknown (it does not read a GPU
// in MIG mode), never zero.
func TestDRAMIGClaim(t *testing.T) {
	requireDRA(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	file := filepath.Join(c.Dir, "fakegpu-mig-dra.yaml")
	writeMIGConfig(t, file, migBefore)
	restartAgentOffering(t, 4, "--fake-config="+file, "--mig-strategy=dra")
	if err := c.RestartDRADriver("--fake-config="+file, "--mig-strategy=dra"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.RestartDRADriver(); err != nil {
			t.Error(err)
		}
	})
	class := &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: "mig.gpuslice.io"}, Spec: resourceapi.DeviceClassSpec{
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
			Expression: fmt.Sprintf(`device.driver == %q && device.attributes[%q].kind == %q`, dra.DriverName, dra.DriverName, dra.KindMIG)}}},
	}}
	if _, err := cs.ResourceV1().DeviceClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.ResourceV1().DeviceClasses().Delete(context.Background(), class.Name, metav1.DeleteOptions{})
	})
	waitFor(t, "the MIG instances published", 30*time.Second, func() bool {
		list, err := cs.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		n := 0
		for _, s := range list.Items {
			for _, d := range s.Spec.Devices {
				if k := d.Attributes[dra.AttrKind].StringValue; k != nil && *k == dra.KindMIG {
					n++
				}
			}
		}
		return err == nil && n == 4
	})
	ns := newNamespace(t, "dra-mig")
	req := resourceapi.ExactDeviceRequest{DeviceClassName: class.Name, Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
		Expression: fmt.Sprintf(`device.attributes[%q].profile == "1g.10gb"`, dra.DriverName)}}}}
	createTemplates(t, ns, &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: "one-1g"},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &req}},
		}}},
	})
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(claimPod("mig", "one-1g", "env; exec /bin/workload --demand 0.5 --memory-mib 256")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "mig")
	env := containerEnv(t, ns, "mig")
	devs := migDevices(t, migBefore)
	var inst *nvml.MIGInstance
	for _, in := range devs[0].MIG.Instances {
		if in.UUID == env["NVIDIA_VISIBLE_DEVICES"] && in.Profile == "1g.10gb" {
			inst = &in
		}
	}
	if inst == nil {
		t.Fatalf("the claim's container sees NVIDIA_VISIBLE_DEVICES=%q, not a 1g.10gb instance of GPU 0: %v", env["NVIDIA_VISIBLE_DEVICES"], env)
	}
	if env["GPUSLICE_MEMORY_LIMIT_BYTES"] != fmt.Sprint(inst.MemoryBytes) || env["GPUSLICE_COMPUTE_LIMIT_RATIO"] != "1" {
		t.Errorf("the claim's limits %v, want all of the instance", env)
	}
	// The agent measures the claim's container on the instance.
	waitInstanceUse(t, "mig", inst.UUID, "1g.10gb", 256<<20)
}

// waitInstanceUse waits until the agent reports pod's container on a MIG
// instance of an H100: the memory its workload holds there, the instance's
// profile, and its compute measured by GPM (the driver measures no process
// on MIG; the container holds the instance alone), near the workload's
// demand of 0.5.
func waitInstanceUse(t *testing.T, pod, uuid, profile string, memory float64) {
	t.Helper()
	labels := map[string]string{"pod": pod, "container": "main", "uuid": uuid}
	waitFor(t, "the agent measures pod "+pod+" on its MIG instance", 30*time.Second, func() bool {
		mfs := scrape(t)
		used, _ := value(mfs, "gpuslice_container_memory_used_bytes", labels)
		unmeasured, ok := value(mfs, "gpuslice_container_compute_unmeasured", labels)
		sm, _ := value(mfs, "gpuslice_container_sm_utilization_ratio", labels)
		_, named := value(mfs, "gpuslice_container_mig_info", map[string]string{"pod": pod, "uuid": uuid, "mig_profile": profile})
		return used == memory && ok && unmeasured == 0 && sm > 0.3 && sm <= 0.55 && named
	})
}

// TestMIGSlicesNode: a MIG profile the administrator cuts
// (slicing.migProfiles) is offered as slices of its instances,
// nvidia.com/vgpu-mig-3g.40gb, and no longer whole. Two pods share one
// instance; the one over its share of the instance's memory is killed,
// the other runs on, measured on the instance with its share as limits.
// A greedy pod then shares the instance with it, and the two take turns.
func TestMIGSlicesNode(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	file := filepath.Join(c.Dir, "fakegpu-mig-slices.yaml")
	writeMIGConfig(t, file, migBefore)
	cfg := filepath.Join(c.Dir, "node-mig-slices.yaml")
	if err := os.WriteFile(cfg, []byte("apiVersion: gpuslice.io/v1alpha1\nkind: NodeConfig\nslicing: {migProfiles: {3g.40gb: {slicesPerGPU: 4}}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	restartAgentOffering(t, 4, "--fake-config="+file, "--config="+cfg)
	waitNodeResource(t, "nvidia.com/vgpu-mig-3g.40gb", 4)
	waitNodeResource(t, "nvidia.com/mig-3g.40gb", 0)
	waitNodeResource(t, "nvidia.com/mig-1g.10gb", 2)
	ns := newNamespace(t, "mig-slices")

	var inst nvml.MIGInstance
	for _, in := range migDevices(t, migBefore)[0].MIG.Instances {
		if in.Profile == "3g.40gb" {
			inst = in
		}
	}
	quarter := inst.MemoryBytes / 4
	for _, p := range []struct {
		name   string
		slices int64
		mib    uint64
	}{{"small", 1, 1024}, {"greedy", 2, 2*quarter>>20 + 2048}} {
		pd := withHostPID(pod(p.name, 0, fmt.Sprintf("env; exec /bin/workload --demand 0.3 --memory-mib %d", p.mib)))
		pd.Spec.Containers[0].Resources.Limits = corev1.ResourceList{"nvidia.com/vgpu-mig-3g.40gb": *resource.NewQuantity(p.slices, resource.DecimalSI)}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pd, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitRunning(t, ns, "small")
	env := containerEnv(t, ns, "small")
	if env["NVIDIA_VISIBLE_DEVICES"] != inst.UUID || env["GPUSLICE_MEMORY_LIMIT_BYTES"] != fmt.Sprint(quarter) || env["GPUSLICE_COMPUTE_LIMIT_RATIO"] != "0.25" {
		t.Errorf("the small pod sees %v; want a quarter of the 3g.40gb instance %s", env, inst.UUID)
	}
	waitPhase(t, ns, "greedy", corev1.PodFailed)
	labels := map[string]string{"pod": "small", "container": "main", "uuid": inst.UUID}
	waitFor(t, "the small pod measured on its slice of the instance", 30*time.Second, func() bool {
		mfs := scrape(t)
		used, _ := value(mfs, "gpuslice_container_memory_used_bytes", labels)
		limit, _ := value(mfs, "gpuslice_container_memory_limit_bytes", labels)
		_, named := value(mfs, "gpuslice_container_mig_info", map[string]string{"pod": "small", "uuid": inst.UUID, "mig_profile": "3g.40gb"})
		return used == 1024<<20 && limit == float64(quarter) && named
	})
	if p, err := cs.CoreV1().Pods(ns).Get(ctx, "small", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodRunning {
		t.Errorf("the small pod, within its share: %v %v", p.Status.Phase, err)
	}

	// Compute: a greedy pod on two slices beside the small one. The
	// driver cannot tell their use apart, so they take turns: under the
	// cluster's strict policy a quarter and a half of each period, the
	// free slice idle. Judged by the workloads' own progress: time-sliced,
	// the greedy pod would run all the time and the small one too.
	wide := withHostPID(pod("wide", 0, "exec /bin/workload --demand 1 --memory-mib 1024"))
	wide.Spec.Containers[0].Resources.Limits = corev1.ResourceList{"nvidia.com/vgpu-mig-3g.40gb": *resource.NewQuantity(2, resource.DecimalSI)}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, wide, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "wide")
	wideLabels := map[string]string{"pod": "wide", "container": "main", "uuid": inst.UUID}
	waitFor(t, "the pods sharing the instance taking turns of a quarter and a half", 60*time.Second, func() bool {
		mfs := scrape(t)
		ds, _ := value(mfs, "gpuslice_enforcement_compute_duty_ratio", labels)
		dw, _ := value(mfs, "gpuslice_enforcement_compute_duty_ratio", wideLabels)
		held, _ := value(mfs, "gpuslice_enforcement_enforced", map[string]string{"pod": "wide", "uuid": inst.UUID, "resource": "compute", "reason": "enforced"})
		return math.Abs(ds-0.25) < 0.01 && math.Abs(dw-0.5) < 0.01 && held == 1
	})
	if got := workShare(t, ns, "wide", 6*time.Second); got > 0.65 {
		t.Errorf("the greedy pod on 2 of 4 slices ran %.2f of the time: it does not take turns", got)
	}
	if got := workShare(t, ns, "small", 6*time.Second); got > 0.3*0.5 {
		t.Errorf("the small pod (demand 0.3) ran %.2f of the time: it does not take turns", got/0.3)
	}
}
