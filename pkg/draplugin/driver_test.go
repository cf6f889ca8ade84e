package draplugin_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/draplugin"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

const nodeName = "node-a"

// TestPluginServesTheKubelet runs the plugin as the kubelet meets it: on a
// real API server, through the kubeletplugin helper, called over its unix
// socket with the kubelet's own DRA client. It publishes the node's GPUs;
// a claim the scheduler gave 3 of 8 slices of a GPU is prepared to a CDI
// device whose spec is on disk; a claim that would overcommit the GPU is
// refused on that claim alone; unpreparing frees the share.
func TestPluginServesTheKubelet(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	layout, devs := gpus(t)
	devices, err := dra.Devices(layout, devs, nvml.SystemInfo{DriverVersion: "580.65.06"})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "dra") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cdiDir := filepath.Join(dir, "cdi")
	for _, d := range []string{cdiDir, filepath.Join(dir, "reg"), filepath.Join(dir, "plugin")} {
		if err := os.Mkdir(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	prep, err := dra.NewPreparer(dra.PreparerOptions{Pool: nodeName, Layout: layout, CDIDir: cdiDir, StatePath: filepath.Join(dir, "prepared.json"),
		Nodes: dra.Nodes{DevRoot: "/dev", Minor: map[string]int{devs[0].UUID: 0, devs[1].UUID: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	fatal := make(chan error, 1)
	p, err := draplugin.Start(ctx, draplugin.Options{NodeName: nodeName, Client: cs, Preparer: prep, Devices: devices,
		RegistrarDir: filepath.Join(dir, "reg"), PluginDir: filepath.Join(dir, "plugin"), Fatal: func(err error) { fatal <- err }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()

	waitForSlices(t, cs, fatal)

	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "plugin", "dra.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	kubelet := drapb.NewDRAPluginClient(conn)
	a := allocatedClaim(t, cs, "a", "gpu-1", 3, 30)
	b := allocatedClaim(t, cs, "b", "gpu-1", 6, 10)
	resp, err := kubelet.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{ref(a), ref(b)}})
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Claims[string(a.UID)]
	if got.GetError() != "" || len(got.GetDevices()) != 1 || got.Devices[0].CdiDeviceIds[0] != dra.CDIDeviceID(a.UID) || got.Devices[0].DeviceName != "gpu-1" {
		t.Fatalf("claim a: %+v", got)
	}
	if resp.Claims[string(b.UID)].GetError() == "" {
		t.Errorf("claim b (6 more slices of a GPU with 5 left) was prepared: %+v", resp.Claims[string(b.UID)])
	}
	if _, err := os.Stat(filepath.Join(cdiDir, "gpuslice-claim-"+string(a.UID)+".json")); err != nil {
		t.Errorf("claim a's CDI spec: %v", err)
	}
	if _, err := kubelet.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{ref(a)}}); err != nil {
		t.Fatal(err)
	}
	resp, err = kubelet.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{ref(b)}})
	if err != nil || resp.Claims[string(b.UID)].GetError() != "" {
		t.Errorf("claim b after a was unprepared: %v, %+v", err, resp)
	}
}

func gpus(t *testing.T) (*vgpu.Layout, []nvml.Device) {
	t.Helper()
	var g []vgpu.GPU
	var devs []nvml.Device
	for i := range 2 {
		uuid := fmt.Sprintf("GPU-%08d-1111-2222-3333-444444444444", i)
		g = append(g, vgpu.GPU{UUID: uuid, Index: i, Model: "NVIDIA H100 80GB HBM3", MemoryBytes: 80 << 30})
		devs = append(devs, nvml.Device{UUID: uuid, Index: i, Minor: i, Model: "NVIDIA H100 80GB HBM3", MemoryBytes: 80 << 30, ComputeMajor: 9, NUMANode: -1})
	}
	l, err := vgpu.NewLayout(g, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 8}})
	if err != nil {
		t.Fatal(err)
	}
	return l, devs
}

// waitForSlices waits until the node's pool is published with both GPUs.
func waitForSlices(t *testing.T, cs kubernetes.Interface, fatal <-chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := cs.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
		if err == nil && len(list.Items) == 1 && list.Items[0].Spec.Driver == dra.DriverName && len(list.Items[0].Spec.Devices) == 2 && *list.Items[0].Spec.NodeName == nodeName {
			return
		}
		select {
		case err := <-fatal:
			t.Fatalf("the plugin gave up: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ResourceSlice for %s: %v, %v", nodeName, list, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// allocatedClaim creates a claim and records, as the scheduler would, that
// it consumes compute slices and memoryGiB of device on this node.
func allocatedClaim(t *testing.T, cs kubernetes.Interface, name, device string, compute, memoryGiB int64) *resourceapi.ResourceClaim {
	t.Helper()
	ctx := context.Background()
	c, err := cs.ResourceV1().ResourceClaims("default").Create(ctx, &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
			Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: "gpu.gpuslice.io"},
		}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	share := types.UID(fmt.Sprintf("%08d-0000-0000-0000-000000000000", compute))
	c.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{{
		Request: "gpu", Driver: dra.DriverName, Pool: nodeName, Device: device, ShareID: &share,
		ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{
			dra.CapacityCompute: *resource.NewQuantity(compute, resource.DecimalSI),
			dra.CapacityMemory:  *resource.NewQuantity(memoryGiB<<30, resource.BinarySI),
		},
	}}}}
	c.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "p-" + name, UID: types.UID("pod-" + name)}}
	c, err = cs.ResourceV1().ResourceClaims("default").UpdateStatus(ctx, c, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ref(c *resourceapi.ResourceClaim) *drapb.Claim {
	return &drapb.Claim{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}
}
