package dra_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

// node is n GPUs of one model, cut into slices each, as NVML and the
// layout report them.
func node(t testing.TB, n, slices int, model string, memory uint64) (*vgpu.Layout, []nvml.Device) {
	t.Helper()
	var gpus []vgpu.GPU
	var devs []nvml.Device
	for i := range n {
		uuid := fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", i)
		gpus = append(gpus, vgpu.GPU{UUID: uuid, Index: i, Model: model, MemoryBytes: memory})
		devs = append(devs, nvml.Device{UUID: uuid, Index: i, Minor: i, Model: model, MemoryBytes: memory, ComputeMajor: 9, PCIBusID: fmt.Sprintf("00000000:%02X:00.0", i+1), NUMANode: i / 4, PCIeRoot: fmt.Sprintf("pci0000:%02x", i/4*0x40)})
	}
	l, err := vgpu.NewLayout(gpus, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: slices}})
	if err != nil {
		t.Fatal(err)
	}
	return l, devs
}

// TestDevicesDescribeEachGPU: every GPU is one device that claims share,
// its compute counted in slices and its memory in slice-sized steps, with
// request policies the API accepts (default and max on the step, min plus
// step within the capacity).
func TestDevicesDescribeEachGPU(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		gpus, slices int
	}{{8, 8}, {1, 1}, {2, 7}, {130, 2}} {
		t.Run(fmt.Sprintf("%dx%d", tc.gpus, tc.slices), func(t *testing.T) {
			t.Parallel()
			l, devs := node(t, tc.gpus, tc.slices, "NVIDIA H100 80GB HBM3", 80<<30)
			got, err := dra.Devices(l, devs, nvml.SystemInfo{DriverVersion: "580.65.06"})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.gpus {
				t.Fatalf("%d devices for %d GPUs", len(got), tc.gpus)
			}
			for i, d := range got {
				if d.Name != dra.DeviceName(i) || d.AllowMultipleAllocations == nil || !*d.AllowMultipleAllocations {
					t.Fatalf("device %d: name %q, shared %v", i, d.Name, d.AllowMultipleAllocations)
				}
				if n := len(d.Attributes) + len(d.Capacity); n > resourceapi.ResourceSliceMaxAttributesAndCapacitiesPerDevice {
					t.Errorf("%s: %d attributes and capacities, over the API's limit", d.Name, n)
				}
				checkStepped(t, d.Name+" compute", d.Capacity[dra.CapacityCompute], int64(tc.slices), 1)
				checkStepped(t, d.Name+" memory", d.Capacity[dra.CapacityMemory], int64(tc.slices), int64(l.GPUs()[i].SliceMemoryBytes))
				if got := *d.Attributes[dra.AttrDriverVersion].VersionValue; got != "580.65.6" {
					t.Errorf("%s: driverVersion %q", d.Name, got)
				}
				if got := *d.Attributes[dra.AttrUUID].StringValue; got != devs[i].UUID {
					t.Errorf("%s: uuid %q, want %q", d.Name, got, devs[i].UUID)
				}
				// The standard attributes, in their own forms: the PCI
				// address as sysfs writes it, lower case, 4-digit domain.
				std := d.Attributes
				if n, bus, root := std[dra.AttrStandardNUMANode].IntValue, std[dra.AttrStandardPCIBusID].StringValue, std[dra.AttrStandardPCIeRoot].StringValue; n == nil || *n != int64(i/4) ||
					bus == nil || *bus != fmt.Sprintf("0000:%02x:00.0", i+1) || root == nil || *root != devs[i].PCIeRoot {
					t.Errorf("%s: standard numaNode %v, pciBusID %v, pcieRoot %v", d.Name, n, bus, root)
				}
			}
			total := 0
			for _, s := range dra.Slices(got) {
				if len(s) == 0 || len(s) > dra.MaxDevicesPerSlice {
					t.Errorf("a ResourceSlice of %d devices", len(s))
				}
				total += len(s)
			}
			if total != tc.gpus {
				t.Errorf("the slices carry %d devices of %d", total, tc.gpus)
			}
		})
	}
}

func checkStepped(t *testing.T, what string, c resourceapi.DeviceCapacity, n, step int64) {
	t.Helper()
	p := c.RequestPolicy
	if c.Value.Value() != n*step || p == nil || p.ValidRange == nil || p.Default.Value() != step {
		t.Fatalf("%s: %+v, want %d steps of %d, default one step", what, c, n, step)
	}
	r := p.ValidRange
	if r.Min.Value() != step || r.Max.Value() != n*step {
		t.Errorf("%s: range %s..%s, want %d..%d", what, r.Min, r.Max, step, n*step)
	}
	if r.Step != nil && r.Min.Value()+r.Step.Value() > c.Value.Value() {
		t.Errorf("%s: min %s + step %s over the capacity %s", what, r.Min, r.Step, &c.Value)
	}
}

// TestDevicesNeedEveryGPU: a GPU of the layout NVML did not report is an
// error, never a device without attributes.
func TestDevicesNeedEveryGPU(t *testing.T) {
	t.Parallel()
	l, devs := node(t, 2, 4, "NVIDIA A100-SXM4-40GB", 40<<30)
	if _, err := dra.Devices(l, devs[:1], nvml.SystemInfo{}); !errors.Is(err, dra.ErrNoDevice) || !strings.Contains(err.Error(), devs[1].UUID) {
		t.Errorf("Devices without GPU 1's NVML device = %v, want ErrNoDevice naming it", err)
	}
}

func TestSemVer(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"580.65.06": "580.65.6", "550.54": "550.54.0", "570.124.06": "570.124.6", "": "", "580": "", "580.x.1": "", "1.2.3.4": "", "580..1": ""} {
		got, ok := dra.SemVer(in)
		if got != want || ok != (want != "") {
			t.Errorf("SemVer(%q) = %q, %t; want %q", in, got, ok, want)
		}
	}
}

// TestAPIServerAcceptsTheDevices: the real kube-apiserver stores the
// ResourceSlices as built, consumable capacity and request policies
// included (a server without the feature would drop them silently), and
// the same check rejects a device whose policy breaks the API's rules,
// so it can fail.
func TestAPIServerAcceptsTheDevices(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ctx := context.Background()
	for _, tc := range []struct{ gpus, slices int }{{8, 8}, {1, 1}, {70, 3}} {
		l, devs := node(t, tc.gpus, tc.slices, "NVIDIA H100 80GB HBM3", 80<<30)
		devices, err := dra.Devices(l, devs, nvml.SystemInfo{DriverVersion: "580.65.06"})
		if err != nil {
			t.Fatal(err)
		}
		parts := dra.Slices(devices)
		for i, part := range parts {
			slice := &resourceapi.ResourceSlice{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%dx%d-%d", tc.gpus, tc.slices, i)},
				Spec: resourceapi.ResourceSliceSpec{
					Driver: dra.DriverName, NodeName: ref("node-a"), Devices: part,
					Pool: resourceapi.ResourcePool{Name: fmt.Sprintf("node-%dx%d", tc.gpus, tc.slices), Generation: 1, ResourceSliceCount: int64(len(parts))},
				},
			}
			got, err := cs.ResourceV1().ResourceSlices().Create(ctx, slice, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("%d×%d slice %d: %v", tc.gpus, tc.slices, i, err)
			}
			for j, d := range got.Spec.Devices {
				c := d.Capacity[dra.CapacityCompute]
				if d.AllowMultipleAllocations == nil || !*d.AllowMultipleAllocations || c.RequestPolicy == nil || c.RequestPolicy.ValidRange == nil {
					t.Fatalf("%d×%d device %d came back without sharing or request policy: %+v", tc.gpus, tc.slices, j, d)
				}
			}
		}
	}
	// The broken variant: a step on a one-slice GPU (min + step over the
	// capacity) must be refused.
	l, devs := node(t, 1, 1, "NVIDIA H100 80GB HBM3", 80<<30)
	devices, _ := dra.Devices(l, devs, nvml.SystemInfo{})
	c := devices[0].Capacity[dra.CapacityCompute]
	c.RequestPolicy.ValidRange.Step = c.RequestPolicy.ValidRange.Min
	devices[0].Capacity[dra.CapacityCompute] = c
	broken := &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "broken"},
		Spec: resourceapi.ResourceSliceSpec{Driver: dra.DriverName, NodeName: ref("node-b"), Devices: devices,
			Pool: resourceapi.ResourcePool{Name: "broken", Generation: 1, ResourceSliceCount: 1}},
	}
	if _, err := cs.ResourceV1().ResourceSlices().Create(ctx, broken, metav1.CreateOptions{}); err == nil {
		t.Error("the API server accepted a step on a one-slice GPU: this check cannot fail")
	}
}

func ref[T any](v T) *T { return &v }

// TestAPIServerAcceptsTheSliceDevices: with slice devices, the pool's
// counter sets and devices are stored intact across as many slices as the
// API's limits need (8 GPUs of 8 slices: 72 devices in two slices, the
// counter sets in a third; 17 GPUs: three counter slices), every device
// consuming its GPU's counters.
func TestAPIServerAcceptsTheSliceDevices(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ctx := context.Background()
	for _, tc := range []struct{ gpus, slices, want int }{{8, 8, 3}, {1, 1, 2}, {17, 2, 4}} {
		l, devs := node(t, tc.gpus, tc.slices, "NVIDIA H100 80GB HBM3", 80<<30)
		gpus, err := dra.Devices(l, devs, nvml.SystemInfo{DriverVersion: "580.65.06"})
		if err != nil {
			t.Fatal(err)
		}
		devices, counters := dra.WithSliceDevices(gpus)
		if len(devices) != tc.gpus*(1+tc.slices) || len(counters) != tc.gpus {
			t.Fatalf("%d×%d: %d devices and %d counter sets", tc.gpus, tc.slices, len(devices), len(counters))
		}
		var specs []resourceapi.ResourceSliceSpec
		for _, part := range dra.CounterSlices(counters) {
			specs = append(specs, resourceapi.ResourceSliceSpec{SharedCounters: part})
		}
		for _, part := range dra.Slices(devices) {
			specs = append(specs, resourceapi.ResourceSliceSpec{NodeName: ref("node-a"), Devices: part})
		}
		if len(specs) != tc.want {
			t.Fatalf("%d×%d: %d ResourceSlices, want %d", tc.gpus, tc.slices, len(specs), tc.want)
		}
		pool := fmt.Sprintf("sliced-%dx%d", tc.gpus, tc.slices)
		stored := map[string]resourceapi.Device{}
		for i, spec := range specs {
			spec.Driver, spec.Pool = dra.DriverName, resourceapi.ResourcePool{Name: pool, Generation: 1, ResourceSliceCount: int64(len(specs))}
			if spec.NodeName == nil {
				spec.AllNodes = nil
				spec.NodeName = ref("node-a")
			}
			got, err := cs.ResourceV1().ResourceSlices().Create(ctx, &resourceapi.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", pool, i)}, Spec: spec}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("%d×%d slice %d: %v", tc.gpus, tc.slices, i, err)
			}
			for _, d := range got.Spec.Devices {
				stored[d.Name] = d
			}
		}
		for _, d := range devices {
			got := stored[d.Name]
			if len(got.ConsumesCounters) != 1 || got.ConsumesCounters[0].CounterSet != d.ConsumesCounters[0].CounterSet {
				t.Fatalf("%d×%d device %s came back without its counters: %+v", tc.gpus, tc.slices, d.Name, got)
			}
		}
	}
}

// TestSizedDevices: per size, as many devices of that many slices as fit
// each GPU, each consuming its slices of the GPU's counters, and the real
// API server stores them with their counters.
func TestSizedDevices(t *testing.T) {
	l, devs := node(t, 2, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	gpus, err := dra.Devices(l, devs, nvml.SystemInfo{DriverVersion: "580.65.06"})
	if err != nil {
		t.Fatal(err)
	}
	devices, counters := dra.Partitioned(gpus, false, []int{2, 3, 8})
	// Per GPU: itself, 4 of 2 slices, 2 of 3, 1 of 8.
	if len(devices) != 2*(1+4+2+1) || len(counters) != 2 {
		t.Fatalf("%d devices, %d counter sets", len(devices), len(counters))
	}
	byName := map[string]resourceapi.Device{}
	for _, d := range devices {
		byName[d.Name] = d
	}
	d, ok := byName[dra.SizedDeviceName(1, 3, 1)]
	if !ok || *d.Attributes[dra.AttrKind].StringValue != dra.KindSized || *d.Attributes[dra.AttrSize].IntValue != 3 ||
		d.ConsumesCounters[0].CounterSet != dra.CounterSetName(1) || capacityOf(d, dra.CapacityCompute) != 3 {
		t.Fatalf("gpu-1-x3-1: %+v", d)
	}
	if _, ok := byName[dra.SizedDeviceName(0, 3, 2)]; ok {
		t.Fatal("a third device of 3 slices on an 8-slice GPU")
	}
	with, _ := dra.Partitioned(gpus, true, []int{1, 4})
	if len(with) != 2*(1+8+2) {
		t.Fatalf("slices and size 4: %d devices (size 1 is a slice)", len(with))
	}
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	var specs []resourceapi.ResourceSliceSpec
	for _, part := range dra.CounterSlices(counters) {
		specs = append(specs, resourceapi.ResourceSliceSpec{SharedCounters: part})
	}
	for _, part := range dra.Slices(devices) {
		specs = append(specs, resourceapi.ResourceSliceSpec{Devices: part})
	}
	for i, spec := range specs {
		spec.Driver, spec.NodeName = dra.DriverName, ref("node-a")
		spec.Pool = resourceapi.ResourcePool{Name: "sized", Generation: 1, ResourceSliceCount: int64(len(specs))}
		if _, err := cs.ResourceV1().ResourceSlices().Create(context.Background(), &resourceapi.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sized-%d", i)}, Spec: spec}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("slice %d: %v", i, err)
		}
	}
}

func capacityOf(d resourceapi.Device, name resourceapi.QualifiedName) int64 {
	q := d.Capacity[name].Value
	return q.Value()
}
