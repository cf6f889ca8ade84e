package dra_test

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// migNode: GPU 0 in MIG mode (3g.40gb, 1g.10gb, 1g.10gb), GPU 1 whole.
func migNode(t *testing.T) ([]nvml.Device, dra.MIGInstances) {
	t.Helper()
	n, err := fakegpu.New(fakegpu.Config{GPUs: []fakegpu.GPUConfig{
		{Preset: "H100-80GB", MIG: fakegpu.MIGConfig{Mode: "enabled", Instances: []fakegpu.MIGInstanceConfig{{Profile: "3g.40gb"}, {Profile: "1g.10gb"}, {Profile: "1g.10gb"}}}},
		{Preset: "H100-80GB"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := n.Devices()
	return devs, dra.NewMIGInstances(devs)
}

func TestMIGDevices(t *testing.T) {
	t.Parallel()
	devs, mig := migNode(t)
	got := dra.MIGDevices(mig, nvml.SystemInfo{DriverVersion: "580.65.06"})
	var names []string
	for _, d := range got {
		names = append(names, d.Name)
		a := d.Attributes
		in := mig[d.Name]
		switch {
		case *a[dra.AttrKind].StringValue != dra.KindMIG, *a[dra.AttrUUID].StringValue != in.UUID, *a[dra.AttrParentUUID].StringValue != devs[0].UUID,
			*a[dra.AttrProfile].StringValue != in.Profile, *a[dra.AttrMemory].IntValue != int64(in.MemoryBytes),
			*a[dra.AttrMultiprocessors].IntValue != int64(in.Multiprocessors), *a[dra.AttrGPUInstanceID].IntValue != int64(in.GPUInstanceID),
			*a[dra.AttrComputeInstanceID].IntValue != 0, *a[dra.AttrIndex].IntValue != 0, a[dra.AttrDriverVersion].VersionValue == nil:
			t.Errorf("%s: attributes %+v", d.Name, a)
		}
		if d.AllowMultipleAllocations != nil && *d.AllowMultipleAllocations {
			t.Errorf("%s may be shared by several claims", d.Name)
		}
		if _, ok := a[dra.AttrSlices]; ok {
			t.Errorf("%s says it has slices", d.Name)
		}
	}
	if want := []string{"gpu-0-mig-1-0", "gpu-0-mig-2-0", "gpu-0-mig-3-0"}; !slices.Equal(names, want) {
		t.Errorf("devices %v, want %v", names, want)
	}
}

func TestMIGGrants(t *testing.T) {
	t.Parallel()
	devs, mig := migNode(t)
	l := layoutOf(t, devs[1:])
	small := mig["gpu-0-mig-2-0"]
	g, err := dra.Grants(claim(share("gpu-0-mig-2-0", -1, 0)), pool, l, mig)
	if err != nil {
		t.Fatal(err)
	}
	want := contract.ClaimGrant{UUID: small.UUID, Index: 0, Parent: devs[0].UUID, MIGProfile: "1g.10gb", Whole: true,
		Slices: 1, SlicesTotal: 1, ComputeRatio: 1, MemoryBytes: small.MemoryBytes, MemoryCapacity: small.MemoryBytes}
	if len(g) != 1 || g[0] != want {
		t.Errorf("grants %+v, want %+v", g, want)
	}
	if _, err := dra.Grants(claim(share("gpu-0-mig-2-0", 1, 1)), pool, l, mig); !errors.Is(err, dra.ErrBadCapacity) {
		t.Errorf("a MIG instance shared by capacity: err %v", err)
	}
	if _, err := dra.Grants(claim(share("gpu-0-mig-2-0", -1, 0), share("gpu-0-mig-2-0", -1, 0)), pool, l, mig); !errors.Is(err, dra.ErrOvercommitted) {
		t.Errorf("one instance twice in one claim: err %v", err)
	}
	if _, err := dra.Grants(claim(share("gpu-0-mig-9-0", -1, 0)), pool, l, mig); !errors.Is(err, dra.ErrUnknownDevice) {
		t.Errorf("an instance that does not exist: err %v", err)
	}
	// Two claims on two instances of one GPU: fine; two on one: refused.
	ledger := dra.NewLedger()
	other, _ := dra.Grants(claim(share("gpu-0-mig-3-0", -1, 0)), pool, l, mig)
	if err := ledger.Admit("a", g); err != nil {
		t.Fatal(err)
	}
	if err := ledger.Admit("b", other); err != nil {
		t.Errorf("a claim on another instance of the GPU: %v", err)
	}
	if err := ledger.Admit("c", g); !errors.Is(err, dra.ErrOvercommitted) {
		t.Errorf("a second claim on one instance: err %v", err)
	}
	// The record's check accepts what the driver records.
	if _, err := contract.ParsePreparedClaims([]byte(`{"version":1,"claims":{"a":{"namespace":"n","name":"a","grants":[{"uuid":"` + small.UUID +
		`","index":0,"parent":"` + devs[0].UUID + `","slices":1,"slicesTotal":1,"computeRatio":1,"memoryBytes":5,"memoryCapacity":5,"whole":true}]}}}`)); err != nil {
		t.Errorf("the record of a MIG claim: %v", err)
	}
}

func TestMIGCDISpec(t *testing.T) {
	t.Parallel()
	devs, mig := migNode(t)
	g, err := dra.Grants(claim(share("gpu-0-mig-2-0", -1, 0), share("gpu-0-mig-3-0", -1, 0)), pool, layoutOf(t, devs[1:]), mig)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := dra.CDISpec("uid-1", g, dra.Nodes{DevRoot: "/dev", Minor: map[string]int{devs[1].UUID: 1}, MIG: mig.Nodes()})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, n := range spec.Devices[0].ContainerEdits.DeviceNodes {
		nodes = append(nodes, n.Path)
	}
	a, b := mig["gpu-0-mig-2-0"], mig["gpu-0-mig-3-0"]
	want := []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0",
		capNode(a.GICapMinor), capNode(a.CICapMinor), capNode(b.GICapMinor), capNode(b.CICapMinor)}
	if !slices.Equal(nodes, want) {
		t.Errorf("device nodes %v, want %v (the GPU's node once)", nodes, want)
	}
	env := strings.Join(spec.Devices[0].ContainerEdits.Env, " ")
	if !strings.Contains(env, contract.EnvVisibleDevices+"="+a.UUID+","+b.UUID) {
		t.Errorf("env %s, want the two instances visible", env)
	}
	// Without capability minors it cannot be handed out whole.
	if _, err := dra.CDISpec("uid-1", g, dra.Nodes{DevRoot: "/dev", MIG: map[string]dra.MIGNodes{a.UUID: {GICap: -1, CICap: -1}}}); !errors.Is(err, dra.ErrNoMinor) {
		t.Errorf("no capability minors: err %v", err)
	}
}

func capNode(minor int) string { return "/dev/nvidia-caps/nvidia-cap" + strconv.Itoa(minor) }

// TestMIGDevicesTaintedWithTheirGPU: an XID on a GPU taints its MIG
// instances' devices.
func TestMIGDevicesTaintedWithTheirGPU(t *testing.T) {
	t.Parallel()
	devs, mig := migNode(t)
	got := dra.DefaultTaintPolicy().Tainted(dra.MIGDevices(mig, nvml.SystemInfo{}),
		map[string]nvml.Health{devs[0].UUID: {UUID: devs[0].UUID, Reason: nvml.ReasonXID, XID: 79}}, map[string]bool{devs[0].UUID: true})
	for _, d := range got {
		if len(d.Taints) != 1 || d.Taints[0].Effect != resourceapi.DeviceTaintEffectNoExecute {
			t.Errorf("%s: taints %+v, want its GPU's NoExecute", d.Name, d.Taints)
		}
	}
}

// layoutOf cuts the whole GPUs into 4 slices each.
func layoutOf(t *testing.T, devs []nvml.Device) *vgpu.Layout {
	t.Helper()
	var gpus []vgpu.GPU
	for _, d := range devs {
		gpus = append(gpus, vgpu.GPU{UUID: d.UUID, Index: d.Index, Model: d.Model, MemoryBytes: d.MemoryBytes})
	}
	l, err := vgpu.NewLayout(gpus, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 4}})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestMIGDeviceTaintedAlone: an XID the driver put on one instance taints
// that instance's device only.
func TestMIGDeviceTaintedAlone(t *testing.T) {
	t.Parallel()
	devs, mig := migNode(t)
	one := mig["gpu-0-mig-2-0"]
	got := dra.DefaultTaintPolicy().Tainted(dra.MIGDevices(mig, nvml.SystemInfo{}), map[string]nvml.Health{
		devs[0].UUID: {UUID: devs[0].UUID, Healthy: true},
		one.UUID:     {UUID: one.UUID, Parent: devs[0].UUID, Reason: nvml.ReasonXID, XID: 94},
	}, nil)
	for _, d := range got {
		want := 0
		if d.Name == "gpu-0-mig-2-0" {
			want = 1
		}
		if len(d.Taints) != want {
			t.Errorf("%s: taints %+v, want %d", d.Name, d.Taints, want)
		}
	}
}
