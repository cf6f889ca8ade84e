package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// migNode is a node with a MIG GPU in a mixed layout (GPU 0), a whole GPU
// (GPU 1) and a GPU whose MIG mode is pending, taking force at its next
// reset (GPU 2).
const migNode = `gpus:
- preset: A100-40GB
  mig:
    mode: enabled
    instances: [{profile: 3g.20gb}, {profile: 2g.10gb}, {profile: 1g.5gb}, {profile: 1g.5gb}]
- preset: A100-40GB
- preset: A100-40GB
  mig: {pending: enabled}
`

func writeFake(t *testing.T, cfg string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAgentNeverServesAMIGGPUWhole: CUDA cannot use a GPU in MIG mode
// outside its instances, and a pending mode takes force at the next
// reset, so neither GPU is cut into nvidia.com/vgpu slices.
func TestAgentNeverServesAMIGGPUWhole(t *testing.T) {
	t.Parallel()
	fake := writeFake(t, migNode)
	dev, err := fakegpu.New(mustParse(t, fake))
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := dev.Devices()
	dir := t.TempDir()
	k, err := kubeletstub.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	startAgent(t, "--gpu-backend=fake", "--fake-config="+fake, "--device-plugin-dir="+dir, "--metrics-address="+freePort(t), "--slices-per-gpu=4")
	p, err := k.WaitPlugin(ctxT(t), "nvidia.com/vgpu")
	if err != nil {
		t.Fatal(err)
	}
	var gpus []string
	for _, d := range p.Devices() {
		id, err := vgpu.ParseSliceID(d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(gpus, id.UUID) {
			gpus = append(gpus, id.UUID)
		}
	}
	if want := []string{devs[1].UUID}; !slices.Equal(gpus, want) {
		t.Fatalf("nvidia.com/vgpu slices of %v, want only the whole GPU %v (GPU 0 is in MIG mode, GPU 2's is pending)", gpus, want)
	}
	if n := len(p.Devices()); n != 4 {
		t.Errorf("%d vgpu devices, want 4", n)
	}

	// The MIG instances, under NVIDIA's mixed-strategy names.
	for res, want := range map[string]int{"nvidia.com/mig-3g.20gb": 1, "nvidia.com/mig-2g.10gb": 1, "nvidia.com/mig-1g.5gb": 2} {
		mp, err := k.WaitPlugin(ctxT(t), res)
		if err != nil {
			t.Fatal(err)
		}
		if err := mp.WaitHealthy(ctxT(t), want); err != nil {
			t.Fatalf("%s: %v", res, err)
		}
		if n := len(mp.Devices()); n != want {
			t.Errorf("%s: %d devices, want %d", res, n, want)
		}
	}
	mp := k.Plugin("nvidia.com/mig-1g.5gb")
	a, err := mp.Allocate(ctxT(t), "pod", "main", 1)
	if err != nil {
		t.Fatal(err)
	}
	type view struct {
		UUID   string
		GI, CI int
	}
	var inst *view
	for _, in := range devs[0].MIG.Instances {
		if in.UUID == a.DeviceIDs[0] {
			inst = &view{UUID: in.UUID, GI: in.GICapMinor, CI: in.CICapMinor}
		}
	}
	if inst == nil || inst.UUID == "" {
		t.Fatalf("allocated %v, not an instance of GPU 0", a.DeviceIDs)
	}
	if got := a.Response.Envs["NVIDIA_VISIBLE_DEVICES"]; got != inst.UUID {
		t.Errorf("NVIDIA_VISIBLE_DEVICES=%q, want the instance %s", got, inst.UUID)
	}
	var paths []string
	for _, d := range a.Response.Devices {
		paths = append(paths, d.ContainerPath)
	}
	for _, want := range []string{"/dev/nvidiactl", "/dev/nvidia0", fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", inst.GI), fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", inst.CI)} {
		if !slices.Contains(paths, want) {
			t.Errorf("device nodes %v lack %s", paths, want)
		}
	}
	if slices.Contains(paths, "/dev/nvidia1") {
		t.Errorf("device nodes %v include the whole GPU's", paths)
	}
	if _, ok := a.Response.Envs["GPUSLICE_SLICE_IDS"]; ok {
		t.Error("a MIG instance's container is told it holds slices")
	}
}

func mustParse(t *testing.T, path string) fakegpu.Config {
	t.Helper()
	c, err := fakegpu.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const (
	layoutBefore = `gpus:
- preset: A100-40GB
  mig:
    mode: enabled
    instances: [{profile: 3g.20gb, placement: 4}, {profile: 2g.10gb, placement: 0}, {profile: 1g.5gb, placement: 2}, {profile: 1g.5gb, placement: 3}]
- preset: A100-40GB
`
	// The 3g.20gb is destroyed; the 2g and both 1g stay; three 1g are new.
	layoutAfter = `gpus:
- preset: A100-40GB
  mig:
    mode: enabled
    instances: [{profile: 2g.10gb, placement: 0}, {profile: 1g.5gb, placement: 2}, {profile: 1g.5gb, placement: 3}, {profile: 1g.5gb, placement: 4}, {profile: 1g.5gb, placement: 5}, {profile: 1g.5gb, placement: 6}]
- preset: A100-40GB
`
)

func rewrite(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestAgentFollowsMIGLayoutChanges: an administrator changes GPU 0's
// layout. The agent re-offers what exists (the destroyed 3g.20gb's
// resource drops to zero, three new 1g.5gb are offered), the instance a
// pod holds stays offered under its UUID, and the destroyed instance is
// never handed out, not even by a kubelet that has not heard yet.
func TestAgentFollowsMIGLayoutChanges(t *testing.T) {
	t.Parallel()
	fake := writeFake(t, layoutBefore)
	dir := t.TempDir()
	k, err := kubeletstub.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	// Layout changes are read only when an Allocate names a gone instance:
	// the window in which a kubelet has not heard yet stays open.
	startAgent(t, "--gpu-backend=fake", "--fake-config="+fake, "--device-plugin-dir="+dir, "--metrics-address="+freePort(t), "--health-probe-interval=1h")
	big, err := k.WaitPlugin(ctxT(t), "nvidia.com/mig-3g.20gb")
	if err != nil {
		t.Fatal(err)
	}
	small, err := k.WaitPlugin(ctxT(t), "nvidia.com/mig-1g.5gb")
	if err != nil {
		t.Fatal(err)
	}
	if err := small.WaitHealthy(ctxT(t), 2); err != nil {
		t.Fatal(err)
	}
	held, err := small.Allocate(ctxT(t), "pod-a", "main", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := big.WaitHealthy(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	destroyed := big.Devices()[0].ID

	rewrite(t, fake, layoutAfter)
	// Until the fake applies the change the instance exists and may be
	// handed out; after, never.
	var refused error
	for ctx := ctxT(t); ctx.Err() == nil; time.Sleep(50 * time.Millisecond) {
		_, refused = big.Client().Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{destroyed}}}})
		if refused != nil {
			break
		}
	}
	if refused == nil || !strings.Contains(refused.Error(), "no longer exists") {
		t.Fatalf("Allocate of the destroyed instance: %v, want it refused", refused)
	}
	// The refusal re-offers what exists.
	if err := big.WaitHealthy(ctxT(t), 0); err != nil {
		t.Fatalf("the destroyed 3g.20gb is still offered: %v", err)
	}
	if err := small.WaitHealthy(ctxT(t), 5); err != nil {
		t.Fatalf("1g.5gb instances after the change: %v", err)
	}
	var ids []string
	for _, d := range small.Devices() {
		ids = append(ids, d.ID)
	}
	if !slices.Contains(ids, held.DeviceIDs[0]) {
		t.Errorf("pod-a's instance %s is no longer offered after the change: %v", held.DeviceIDs[0], ids)
	}
	if _, err := small.Allocate(ctxT(t), "pod-b", "main", 4); err != nil {
		t.Errorf("the four free 1g.5gb after the change: %v", err)
	}
}

// TestAgentRestartsWhenMIGModeChanges: a GPU whose MIG mode changes must
// be cut anew, which the agent does from its start: it exits saying why,
// for its DaemonSet to start it again.
func TestAgentRestartsWhenMIGModeChanges(t *testing.T) {
	t.Parallel()
	fake := writeFake(t, layoutBefore)
	dir := t.TempDir()
	k, err := kubeletstub.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	a := startAgent(t, "--gpu-backend=fake", "--fake-config="+fake, "--device-plugin-dir="+dir, "--metrics-address="+freePort(t), "--health-probe-interval=100ms")
	if _, err := k.WaitPlugin(ctxT(t), "nvidia.com/vgpu"); err != nil {
		t.Fatal(err)
	}
	rewrite(t, fake, layoutBefore+"  mig: {pending: enabled}\n") // GPU 1's mode, at its next reset
	if code := a.wait(t); code == 0 {
		t.Fatal("the agent exited 0")
	}
	if out := a.stderr.String(); !strings.Contains(out, "gpu 1") || !strings.Contains(out, "MIG mode changed") {
		t.Errorf("stderr does not say which GPU's MIG mode changed:\n%s", out)
	}
}

// TestAgentXIDOnOneMIGInstance: an XID the driver puts on one GPU
// instance takes only that instance away; one on the GPU takes all of its
// instances.
func TestAgentXIDOnOneMIGInstance(t *testing.T) {
	t.Parallel()
	fake := writeFake(t, layoutBefore)
	dir := t.TempDir()
	k, err := kubeletstub.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	startAgent(t, "--gpu-backend=fake", "--fake-config="+fake, "--device-plugin-dir="+dir, "--metrics-address="+freePort(t))
	small, err := k.WaitPlugin(ctxT(t), "nvidia.com/mig-1g.5gb")
	if err != nil {
		t.Fatal(err)
	}
	big, err := k.WaitPlugin(ctxT(t), "nvidia.com/mig-3g.20gb")
	if err != nil {
		t.Fatal(err)
	}
	if err := small.WaitHealthy(ctxT(t), 2); err != nil {
		t.Fatal(err)
	}
	// GPU instance 3 is the first 1g.5gb (instances take IDs in creation order).
	rewrite(t, fake, layoutBefore+"faults: {gpus: [{index: 0, xid: 94, gpuInstance: 3}]}\n")
	if err := small.WaitHealthy(ctxT(t), 1); err != nil {
		t.Fatalf("after an XID on one 1g.5gb: %v", err)
	}
	if err := big.WaitHealthy(ctxT(t), 1); err != nil {
		t.Fatalf("the 3g.20gb after an XID on another instance: %v", err)
	}
	rewrite(t, fake, layoutBefore+"faults: {gpus: [{index: 0, xid: 79}]}\n")
	if err := small.WaitHealthy(ctxT(t), 0); err != nil {
		t.Fatalf("after an XID on the GPU: %v", err)
	}
	if err := big.WaitHealthy(ctxT(t), 0); err != nil {
		t.Fatalf("the 3g.20gb after an XID on its GPU: %v", err)
	}
}

// TestMIGInstanceUseFromRealCgroups: on a node with a GPU in MIG mode,
// each instance is read as a device of its own. A pod holding an instance
// (through NVIDIA's mixed-strategy resource) is measured on it: the memory
// its process holds, its compute reported unmeasured (the driver samples
// none on MIG) rather than a zero, the instance and profile it holds
// named, and its limits held by the hardware. A process of another pod,
// which holds a different instance, on that same instance is unauthorized
// and killed; before instances were read, no process on a GPU in MIG
// mode was judged at all.
func TestMIGInstanceUseFromRealCgroups(t *testing.T) {
	t.Parallel()
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-mig-test-%d", os.Getpid()))
	st := stubKubelet(t, "gpus:\n- preset: A100-40GB\n  mig:\n    mode: enabled\n    instances: [{profile: 3g.20gb}, {profile: 1g.5gb}]\n"+
		"- preset: H100-80GB\n  mig:\n    mode: enabled\n    instances: [{profile: 1g.10gb}]\n")
	addr := freePort(t)
	startAgent(t, append(st.agentArgs(), "--metrics-address="+addr, "--sample-interval=200ms", "--device-specs=false")...)
	alloc := func(res, pod string) string {
		p, err := st.kubelet.WaitPlugin(ctxT(t), res)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.WaitHealthy(ctxT(t), 1); err != nil {
			t.Fatal(err)
		}
		a, err := p.Allocate(ctxT(t), pod, "main", 1)
		if err != nil {
			t.Fatal(err)
		}
		return a.DeviceIDs[0]
	}
	instA, instB := alloc("nvidia.com/mig-3g.20gb", "ml/a"), alloc("nvidia.com/mig-1g.5gb", "ml/b")
	instC := alloc("nvidia.com/mig-1g.10gb", "ml/c") // on the H100, which has GPM

	workload, err := fakegpu.BuildWorkload(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	procs := map[string]*podWorkload{}
	for _, w := range []struct{ pod, cid, inst string }{
		{"ml/a", strings.Repeat("a3", 32), instA},
		{"ml/b", strings.Repeat("b4", 32), instA}, // pod b holds instB, not instA
		{"ml/c", strings.Repeat("c5", 32), instC},
	} {
		procs[w.pod] = startPodWorkload(t, st, base, workload, w.pod, w.cid, w.inst, 1024)
	}
	procs["ml/b"].waitKilled(t, fmt.Sprintf("pod b's process on instance %s, which it does not hold", instA), addr)
	podA := map[string]string{"namespace": "ml", "pod": "a", "container": "main", "uuid": instA}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if v, _ := value(scrape(t, addr), "gpuslice_container_memory_used_bytes", podA); v == 1024<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod a's use of its instance never measured; last scrape:\n%s", scrapeText(t, addr))
		}
		time.Sleep(200 * time.Millisecond)
	}
	mfs := scrape(t, addr)
	for name, want := range map[string]float64{
		"gpuslice_container_compute_unmeasured": 1, "gpuslice_container_slices": 1, "gpuslice_container_compute_limit_ratio": 1,
		"gpuslice_container_memory_limit_bytes": float64(devMemory(t, st, instA)),
	} {
		if v, ok := value(mfs, name, podA); !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	for _, name := range []string{"gpuslice_container_sm_utilization_ratio", "gpuslice_container_gpu_busy_seconds_total"} {
		if v, ok := value(mfs, name, podA); ok {
			t.Errorf("%s = %v on a MIG instance, whose compute the driver does not measure; want no series", name, v)
		}
	}
	if _, ok := value(mfs, "gpuslice_container_mig_info", withLabel(podA, "mig_profile", "3g.20gb")); !ok {
		t.Error("no gpuslice_container_mig_info naming pod a's 3g.20gb instance")
	}
	if v, ok := value(mfs, "gpuslice_enforcement_enforced", withLabel(withLabel(podA, "resource", "memory"), "reason", "mig")); !ok || v != 1 {
		t.Errorf("pod a's memory enforced = %v (present %v), want 1 with reason mig", v, ok)
	}
	if _, ok := value(mfs, "gpuslice_container_slices", map[string]string{"pod": "b", "uuid": instB}); !ok {
		t.Error("pod b's holding of its own instance is not listed")
	}
	select {
	case <-procs["ml/a"].done:
		t.Error("pod a's process on its own instance was killed")
	default:
	}

	// On the H100, GPM measures the instance: pod c, its one holder, is
	// charged its SM utilization. Judged by the GPU time the workload
	// itself asked for over the same window (its state file), which no
	// NVML reading feeds; a loaded machine slows both alike.
	podC := map[string]string{"namespace": "ml", "pod": "c", "container": "main", "uuid": instC}
	asked := func() float64 {
		var ws fakegpu.WorkloadState
		data, err := os.ReadFile(filepath.Join(st.work, strconv.Itoa(procs["ml/c"].pid)+".json"))
		if err != nil || json.Unmarshal(data, &ws) != nil {
			t.Fatalf("read pod c's workload state: %v", err)
		}
		return float64(ws.RequestedNanos) / 1e9
	}
	busy := func() float64 {
		v, ok := value(scrape(t, addr), "gpuslice_container_gpu_busy_seconds_total", podC)
		if !ok {
			t.Fatalf("no busy time for pod c on its H100 instance; last scrape:\n%s", scrapeText(t, addr))
		}
		return v
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if v, _ := value(scrape(t, addr), "gpuslice_container_gpu_busy_seconds_total", podC); v > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod c is never charged busy time on its H100 instance; last scrape:\n%s", scrapeText(t, addr))
		}
	}
	// Over 8 s: the busy time is the last sample's, up to a sample
	// interval behind the workload's own account (CI once saw 0.66 over
	// 4 s on a loaded machine); charging nothing, or double, still fails.
	b0, a0 := busy(), asked()
	time.Sleep(8 * time.Second)
	b1, a1 := busy(), asked()
	if ratio := (b1 - b0) / (a1 - a0); a1 <= a0 || ratio < 0.6 || ratio > 1.4 {
		t.Errorf("pod c busy %.2f s while its workload asked %.2f s: GPM's charge is off by %.2fx", b1-b0, a1-a0, ratio)
	}
	if v, _ := value(scrape(t, addr), "gpuslice_container_compute_unmeasured", podC); v != 0 {
		t.Errorf("pod c's compute reads unmeasured on a GPU with GPM")
	}
	promtoolCheck(t, scrapeText(t, addr))
}

// devMemory is a MIG instance's memory on the stand-in's fake node.
func devMemory(t *testing.T, st *stubbed, uuid string) uint64 {
	t.Helper()
	dev, err := fakegpu.New(mustParse(t, st.fake))
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := dev.Devices()
	for _, in := range nvml.InstancesInForce(devs) {
		if in.UUID == uuid {
			return in.MemoryBytes
		}
	}
	t.Fatalf("no instance %s on the fake node", uuid)
	return 0
}

// TestMIGSlicesFromRealCgroups: a MIG profile the administrator cuts
// (slicing.migProfiles) is offered as slices of its instances under a
// resource of its own, nvidia.com/vgpu-mig-<profile>, and no longer whole;
// other profiles stay whole. A container gets its instance (MIG UUID) and
// its share of it; two pods share one instance. Memory is held per
// container: a pod over its share of the instance is killed, its
// neighbour on the instance runs on. Compute on a shared instance cannot
// be measured per container (the driver measures no process on MIG), and
// says so (unmeasured, never a zero); its share is held in turns
// (TestMIGTurnsFromRealCgroups).
func TestMIGSlicesFromRealCgroups(t *testing.T) {
	t.Parallel()
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-migslices-test-%d", os.Getpid()))
	st, addr, p := startSlicedMIG(t, "{profile: 3g.20gb}, {profile: 1g.5gb}")
	if _, err := st.kubelet.WaitPlugin(ctxT(t), "nvidia.com/mig-1g.5gb"); err != nil {
		t.Fatal(err)
	}
	if st.kubelet.Plugin("nvidia.com/mig-3g.20gb") != nil {
		t.Error("the sliced profile is offered whole too")
	}
	a, err := p.Allocate(ctxT(t), "ml/a", "main", 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Allocate(ctxT(t), "ml/b", "main", 2)
	if err != nil {
		t.Fatal(err)
	}
	inst := a.Response.Envs["NVIDIA_VISIBLE_DEVICES"]
	if !strings.HasPrefix(inst, "MIG-") || b.Response.Envs["NVIDIA_VISIBLE_DEVICES"] != inst {
		t.Fatalf("the pods see %q and %q, want one MIG instance", inst, b.Response.Envs["NVIDIA_VISIBLE_DEVICES"])
	}
	slice := devMemory(t, st, inst) / 4
	if got := a.Response.Envs["GPUSLICE_MEMORY_LIMIT_BYTES"]; got != strconv.FormatUint(slice, 10) || a.Response.Envs["GPUSLICE_COMPUTE_LIMIT_RATIO"] != "0.25" {
		t.Errorf("pod a's limits %v, want a quarter of the instance (%d bytes)", a.Response.Envs, slice)
	}

	workload, err := fakegpu.BuildWorkload(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	procs := map[string]*podWorkload{}
	for _, w := range []struct {
		pod, cid string
		mib      uint64
	}{
		{"ml/a", strings.Repeat("a6", 32), 1024},
		{"ml/b", strings.Repeat("b7", 32), 2*slice>>20 + 1024}, // over its two slices
	} {
		procs[w.pod] = startPodWorkload(t, st, base, workload, w.pod, w.cid, inst, w.mib)
	}
	procs["ml/b"].waitKilled(t, "pod b, over its share of the instance,", addr)
	podA := map[string]string{"namespace": "ml", "pod": "a", "container": "main", "uuid": inst}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if v, _ := value(scrape(t, addr), "gpuslice_container_memory_used_bytes", podA); v == 1024<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod a's use of its slice never measured; last scrape:\n%s", scrapeText(t, addr))
		}
	}
	mfs := scrape(t, addr)
	for name, want := range map[string]float64{
		"gpuslice_container_slices": 1, "gpuslice_container_memory_limit_bytes": float64(slice), "gpuslice_container_compute_limit_ratio": 0.25,
		"gpuslice_container_compute_unmeasured": 1,
	} {
		if v, ok := value(mfs, name, podA); !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	if v, ok := value(mfs, "gpuslice_enforcement_enforced", withLabel(withLabel(podA, "resource", "memory"), "reason", "enforced")); !ok || v != 1 {
		t.Errorf("pod a's memory: enforced %v (present %v), want held by the watchdog", v, ok)
	}
	if v, ok := value(mfs, "gpuslice_enforcement_enforced", withLabel(withLabel(podA, "resource", "compute"), "reason", "enforced")); !ok || v != 1 {
		t.Errorf("pod a's compute: enforced %v (present %v), want 1: held in turns", v, ok)
	}
	// A 3g.20gb on a 40 GB A100 is half the GPU: budgets charge it so.
	if _, ok := value(mfs, "gpuslice_container_compute_limit_ratio", withLabel(podA, "gpu_fraction", "0.5")); !ok {
		t.Errorf("pod a's series do not say its instance is half its GPU (gpu_fraction 0.5):\n%s", scrapeText(t, addr))
	}
	if _, ok := value(mfs, "gpuslice_mig_instance_info", map[string]string{"mig_uuid": inst, "resource": "nvidia.com/vgpu-mig-3g.20gb"}); !ok {
		t.Error("the sliced instance's info does not name its slice resource")
	}
	select {
	case <-procs["ml/a"].done:
		t.Errorf("pod a, within its share, ended: %v", procs["ml/a"].state)
	default:
	}
	promtoolCheck(t, scrapeText(t, addr))
}

// startSlicedMIG starts the agent on an A100-40GB in MIG mode with the
// given instances, its 3g.20gb profile cut into 4 slices, sampling every
// 200 ms, and returns the node, the agent's metrics address and the
// slices' plugin once all 4 are healthy.
func startSlicedMIG(t *testing.T, instances string) (*stubbed, string, *kubeletstub.Plugin) {
	t.Helper()
	st := stubKubelet(t, "gpus:\n- preset: A100-40GB\n  mig:\n    mode: enabled\n    instances: ["+instances+"]\n")
	cfg := writeFile(t, "node.yaml", head+"slicing: {migProfiles: {3g.20gb: {slicesPerGPU: 4}}}\n")
	addr := freePort(t)
	startAgent(t, append(st.agentArgs(), "--config="+cfg, "--metrics-address="+addr, "--sample-interval=200ms", "--device-specs=false")...)
	p, err := st.kubelet.WaitPlugin(ctxT(t), "nvidia.com/vgpu-mig-3g.20gb")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitHealthy(ctxT(t), 4); err != nil {
		t.Fatal(err)
	}
	return st, addr, p
}

// podWorkload is a fake GPU workload running in a cgroup shaped like a
// pod's container; done closes when it exits, state set before.
type podWorkload struct {
	pid   int
	done  chan struct{}
	state *os.ProcessState
}

// startPodWorkload runs workload on gpu (a GPU's or MIG instance's UUID),
// holding mib MiB, in pod's container cid's cgroup under base; it ends
// with the test, before its cgroup is removed.
func startPodWorkload(t *testing.T, st *stubbed, base, workload, pod, cid, gpu string, mib uint64) *podWorkload {
	t.Helper()
	cg := containerCgroup(t, base, kubeletstub.PodUID(pod), cid)
	cmd := exec.Command(workload, "--dir", st.work, "--gpu", gpu, "--memory-mib", strconv.FormatUint(mib, 10), "--demand", "0.5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &podWorkload{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); w.state = cmd.ProcessState; close(w.done) }()
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); <-w.done })
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		t.Fatalf("move workload into %s: %v", cg, err)
	}
	return w
}

// waitKilled fails the test unless the workload is killed (SIGKILL, as
// the agent kills) within 30 s; what names it in the failure.
func (w *podWorkload) waitKilled(t *testing.T, what, addr string) {
	t.Helper()
	select {
	case <-w.done:
		if ws, ok := w.state.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("%s ended %v, not killed by the agent", what, w.state)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s was not killed; last scrape:\n%s", what, scrapeText(t, addr))
	}
}

// TestMIGTurnsFromRealCgroups: two pods hold 1 and 3 of the
// 4 slices of one instance and both run greedy workloads. The driver
// cannot tell their use apart, so they take turns: judged by the kernel,
// never the agent, their cgroups are never thawed at once (cgroup.events
// read every 5 ms), and by the workloads' own accounts, pod a ran about a
// quarter of what both ran. Time-sliced, as before turns, each would have
// run half, and both would be thawed all the time.
func TestMIGTurnsFromRealCgroups(t *testing.T) {
	t.Parallel()
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-migturns-test-%d", os.Getpid()))
	st, addr, p := startSlicedMIG(t, "{profile: 3g.20gb}")
	a, err := p.Allocate(ctxT(t), "ml/a", "main", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Allocate(ctxT(t), "ml/b", "main", 3); err != nil {
		t.Fatal(err)
	}
	inst := a.Response.Envs["NVIDIA_VISIBLE_DEVICES"]
	workload, err := fakegpu.BuildWorkload(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	procs, freeze := map[string]*podWorkload{}, map[string]string{}
	for pod, cid := range map[string]string{"ml/a": strings.Repeat("a8", 32), "ml/b": strings.Repeat("b9", 32)} {
		procs[pod] = startPodWorkload(t, st, base, workload, pod, cid, inst, 512)
		// Whether the kernel holds the container frozen, at whatever level
		// the agent froze it (here its pod's: no runtime names the
		// container, so the pod's cgroup is held).
		freeze[pod] = filepath.Join(base, "kubepods", "burstable", "pod"+kubeletstub.PodUID(pod), cid, "cgroup.events")
	}
	podA := map[string]string{"namespace": "ml", "pod": "a", "container": "main", "uuid": inst}
	podB := map[string]string{"namespace": "ml", "pod": "b", "container": "main", "uuid": inst}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		mfs := scrape(t, addr)
		da, okA := value(mfs, "gpuslice_enforcement_compute_duty_ratio", podA)
		db, okB := value(mfs, "gpuslice_enforcement_compute_duty_ratio", podB)
		if okA && okB && math.Abs(da-0.25) < 0.01 && math.Abs(db-0.75) < 0.01 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pods never took turns of 25%% and 75%%; last scrape:\n%s", scrapeText(t, addr))
		}
	}
	asked := func() (float64, float64) {
		read := func(pod string) float64 {
			var ws fakegpu.WorkloadState
			data, err := os.ReadFile(filepath.Join(st.work, strconv.Itoa(procs[pod].pid)+".json"))
			if err != nil || json.Unmarshal(data, &ws) != nil {
				t.Fatalf("read %s's workload state: %v", pod, err)
			}
			return float64(ws.RequestedNanos) / 1e9
		}
		return read("ml/a"), read("ml/b")
	}
	a0, b0 := asked()
	both, samples := 0, 0
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		fa, errA := os.ReadFile(freeze["ml/a"])
		fb, errB := os.ReadFile(freeze["ml/b"])
		if errA != nil || errB != nil {
			t.Fatalf("read cgroup.events: %v, %v", errA, errB)
		}
		samples++
		if strings.Contains(string(fa), "frozen 0") && strings.Contains(string(fb), "frozen 0") {
			both++
		}
	}
	// Turns change hands at one edge: a sample may land between one
	// cgroup's thaw and the other's freeze, never for long.
	if frac := float64(both) / float64(samples); frac > 0.1 {
		t.Errorf("both pods thawed in %d of %d samples (%.0f%%): they do not take turns", both, samples, 100*frac)
	}
	a1, b1 := asked()
	if share := (a1 - a0) / ((a1 - a0) + (b1 - b0)); a1 <= a0 || b1 <= b0 || share < 0.15 || share > 0.35 {
		t.Errorf("pod a ran %.2f s and pod b %.2f s: a's part %.2f, want about its quarter", a1-a0, b1-b0, share)
	}
	mfs := scrape(t, addr)
	for _, pod := range []map[string]string{podA, podB} {
		if v, ok := value(mfs, "gpuslice_enforcement_enforced", withLabel(withLabel(pod, "resource", "compute"), "reason", "enforced")); !ok || v != 1 {
			t.Errorf("pod %s's compute: enforced %v (present %v), want 1", pod["pod"], v, ok)
		}
		if v, _ := value(mfs, "gpuslice_container_compute_unmeasured", pod); v != 1 {
			t.Errorf("pod %s's compute reads measured on a shared instance", pod["pod"])
		}
	}
	promtoolCheck(t, scrapeText(t, addr))
}
