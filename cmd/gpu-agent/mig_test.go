package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

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
