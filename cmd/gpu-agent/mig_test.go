package main

import (
	"fmt"
	"strings"
	"time"

	"os"
	"path/filepath"
	"slices"
	"testing"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
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
