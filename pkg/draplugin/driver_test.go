package draplugin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	"k8s.io/client-go/tools/clientcmd"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
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
	cs := driverClient(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := startNode(ctx, t, cs, nodeName, 2, false)
	defer n.plugin.Stop()
	cdiDir := filepath.Join(n.dir, "cdi")

	kubelet := drapb.NewDRAPluginClient(n.dial(t))
	a := allocatedClaim(t, cs, "a", nodeName, "gpu-1", 3, 30)
	b := allocatedClaim(t, cs, "b", nodeName, "gpu-1", 6, 10)
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
	// The claim shows its share in its status, as the API server accepted
	// it (status.devices matches the allocation, share ID and all); the
	// refused claim shows none.
	share := waitDeviceStatus(t, cs, "a")
	if share.UUID == "" || share.Index != 1 || share.Slices != 3 || share.SlicesTotal != 8 || share.MemoryBytes != 30<<30 {
		t.Errorf("claim a's status shows %+v, want 3 of 8 slices and 30 GiB of GPU 1", share)
	}
	if c, err := cs.ResourceV1().ResourceClaims("default").Get(ctx, "b", metav1.GetOptions{}); err != nil || len(c.Status.Devices) != 0 {
		t.Errorf("refused claim b's status: %v, %+v", err, c.Status.Devices)
	}
	if _, err := kubelet.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{ref(a)}}); err != nil {
		t.Fatal(err)
	}
	resp, err = kubelet.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{ref(b)}})
	if err != nil || resp.Claims[string(b.UID)].GetError() != "" {
		t.Errorf("claim b after a was unprepared: %v, %+v", err, resp)
	}
}

// aNode is a plugin serving one node's GPUs.
type aNode struct {
	dir       string // its sockets, CDI specs and record
	plugin    *draplugin.Plugin
	published time.Duration // from Start to its ResourceSlice in the API
}

// dial connects to the plugin's socket as the kubelet does; the
// connection closes when the test ends.
func (n aNode) dial(t testing.TB) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(n.dir, "plugin", "dra.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// startNode creates the Node object and starts a plugin for n GPUs × 8
// slices on it, returning once the node's ResourceSlice is in the API.
func startNode(ctx context.Context, t testing.TB, cs kubernetes.Interface, name string, n int, sliced bool) aNode {
	t.Helper()
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	layout, devs := gpus(t, n)
	devices, err := dra.Devices(layout, devs, nvml.SystemInfo{DriverVersion: "580.65.06"})
	if err != nil {
		t.Fatal(err)
	}
	var counters []resourceapi.CounterSet
	if sliced {
		devices, counters = dra.WithSliceDevices(devices)
	}
	dir, err := os.MkdirTemp("", "dra") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	for _, d := range []string{"cdi", "reg", "plugin"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	minor := map[string]int{}
	for _, d := range devs {
		minor[d.UUID] = d.Minor
	}
	prep, err := dra.NewPreparer(dra.PreparerOptions{Pool: name, Layout: layout, CDIDir: filepath.Join(dir, "cdi"), StatePath: filepath.Join(dir, "prepared.json"),
		Nodes: dra.Nodes{DevRoot: "/dev", Minor: minor}})
	if err != nil {
		t.Fatal(err)
	}
	fatal := make(chan error, 1)
	start := time.Now()
	p, err := draplugin.Start(ctx, draplugin.Options{NodeName: name, Client: cs, Preparer: prep, Devices: devices, Counters: counters,
		RegistrarDir: filepath.Join(dir, "reg"), PluginDir: filepath.Join(dir, "plugin"), Fatal: func(err error) { fatal <- err },
		ClaimEnforcement: filepath.Join(dir, contract.ClaimEnforcementFile)})
	if err != nil {
		t.Fatal(err)
	}
	waitForSlices(t, cs, name, len(devices), len(counters), fatal)
	return aNode{dir: dir, plugin: p, published: time.Since(start)}
}

func gpus(t testing.TB, n int) (*vgpu.Layout, []nvml.Device) {
	t.Helper()
	var g []vgpu.GPU
	var devs []nvml.Device
	for i := range n {
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

// waitForSlices waits until the node's pool is published with its n GPUs.
func waitForSlices(t testing.TB, cs kubernetes.Interface, node string, devices, counterSets int, fatal <-chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := cs.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
		d, c := 0, 0
		for _, s := range list.Items {
			if s.Spec.Driver == dra.DriverName && s.Spec.Pool.ResourceSliceCount == int64(len(list.Items)) {
				d, c = d+len(s.Spec.Devices), c+len(s.Spec.SharedCounters)
			}
		}
		if err == nil && d == devices && c == counterSets {
			return
		}
		select {
		case err := <-fatal:
			t.Fatalf("the plugin gave up: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ResourceSlice for %s: %v, %v", node, list, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// allocatedClaim creates a claim and records, as the scheduler would, that
// it consumes compute slices and memoryGiB of device in pool (a node).
func allocatedClaim(t testing.TB, cs kubernetes.Interface, name, pool, device string, compute, memoryGiB int64) *resourceapi.ResourceClaim {
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
		Request: "gpu", Driver: dra.DriverName, Pool: pool, Device: device, ShareID: &share,
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

// waitDeviceStatus waits until the claim's status shows the driver's
// device with the Prepared condition, and returns the share it shows.
func waitDeviceStatus(t *testing.T, cs kubernetes.Interface, name string) dra.ShareStatus {
	t.Helper()
	share, _ := waitCondition(t, cs, name, dra.ConditionPrepared, func(c metav1.Condition) bool { return c.Status == metav1.ConditionTrue })
	return share
}

// waitCondition waits until the claim's status shows the driver's device
// with a condition of type kind that ok accepts, and returns the share it
// shows and the condition.
func waitCondition(t *testing.T, cs kubernetes.Interface, name, kind string, ok func(metav1.Condition) bool) (dra.ShareStatus, metav1.Condition) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last any
	for {
		c, err := cs.ResourceV1().ResourceClaims("default").Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && len(c.Status.Devices) == 1 {
			d := c.Status.Devices[0]
			last = d.Conditions
			var share dra.ShareStatus
			if d.Data != nil && json.Unmarshal(d.Data.Raw, &share) == nil && d.ShareID != nil && *d.ShareID == string(*c.Status.Allocation.Devices.Results[0].ShareID) {
				for _, cond := range d.Conditions {
					if cond.Type == kind && ok(cond) {
						return share, cond
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("claim %s never showed the %s condition wanted: %v, last %+v", name, kind, err, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ref(c *resourceapi.ResourceClaim) *drapb.Claim {
	return &drapb.Claim{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}
}

// BenchmarkPluginAtEightGPUs measures, on a real API server, the plugin of
// a node of 8 GPUs × 8 slices: publication (from Start until its
// ResourceSlice is in the API, one node per iteration) and then
// NodePrepareResources and NodeUnprepareResources as the kubelet calls
// them, over the socket, for a claim of 3 slices (p50 and p99 of 50 each,
// per node).
func BenchmarkPluginAtEightGPUs(b *testing.B) {
	b.Run("shares", func(b *testing.B) { benchmarkPlugin(b, false) })
	// With a device per slice as well (72 devices, 3 ResourceSlices).
	b.Run("shares+slices", func(b *testing.B) { benchmarkPlugin(b, true) })
}

func benchmarkPlugin(b *testing.B, sliced bool) {
	srv := apiserver.Start(b)
	cs := driverClient(b, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var published, prepare, unprepare []time.Duration
	i := 0
	for b.Loop() {
		name := fmt.Sprintf("node-%d", i)
		i++
		n := startNode(ctx, b, cs, name, 8, sliced)
		published = append(published, n.published)
		conn := n.dial(b)
		kubelet := drapb.NewDRAPluginClient(conn)
		c := ref(allocatedClaim(b, cs, name, name, "gpu-3", 3, 30))
		for range 50 {
			start := time.Now()
			resp, err := kubelet.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{c}})
			if err != nil || resp.Claims[c.Uid].GetError() != "" {
				b.Fatalf("prepare: %v, %+v", err, resp)
			}
			mid := time.Now()
			if _, err := kubelet.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{c}}); err != nil {
				b.Fatal(err)
			}
			prepare, unprepare = append(prepare, mid.Sub(start)), append(unprepare, time.Since(mid))
		}
		_ = conn.Close()
		n.plugin.Stop()
	}
	quantiles(b, "publish", "ms", published)
	quantiles(b, "prepare", "ms", prepare)
	quantiles(b, "unprepare", "ms", unprepare)
}

// quantiles reports the p50 and p99 of samples in ms (with 5 samples,
// the p99 is the maximum).
func quantiles(b *testing.B, what, unit string, samples []time.Duration) {
	b.Helper()
	slices.Sort(samples)
	at := func(q float64) float64 {
		return float64(samples[int(q*float64(len(samples)-1))].Microseconds()) / 1e3
	}
	b.ReportMetric(at(0.50), what+"-p50-"+unit)
	b.ReportMetric(at(0.99), what+"-p99-"+unit)
}

// driverClient is a clientset as the driver will configure its own: 50
// requests a second, bursts of 100. client-go's default (5, bursts of 10)
// would hold every Prepare past the burst to 200 ms, for the claim's GET.
func driverClient(t testing.TB, srv *apiserver.Server) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPluginPreparesSliceDevices: a claim the scheduler made for
// nvidia.com/vgpu: 3 (three slice devices of one GPU) is prepared as one
// CDI device holding 3 slices of that GPU; a fourth claim for all 8 slices
// of the same GPU is refused by the ledger.
func TestPluginPreparesSliceDevices(t *testing.T) {
	srv := apiserver.Start(t)
	cs := driverClient(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := startNode(ctx, t, cs, nodeName, 2, true)
	defer n.plugin.Stop()
	kubelet := drapb.NewDRAPluginClient(n.dial(t))
	sliceClaim := func(name string, slices ...int) *resourceapi.ResourceClaim {
		c, err := cs.ResourceV1().ResourceClaims("default").Create(ctx, &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
				Name: "vgpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: "vgpu.gpuslice.io", Count: int64(len(slices))},
			}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var results []resourceapi.DeviceRequestAllocationResult
		for _, j := range slices {
			results = append(results, resourceapi.DeviceRequestAllocationResult{Request: "vgpu", Driver: dra.DriverName, Pool: nodeName, Device: dra.SliceDeviceName(0, j)})
		}
		c.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: results}}
		c.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "p-" + name, UID: types.UID("pod-" + name)}}
		if c, err = cs.ResourceV1().ResourceClaims("default").UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	three := sliceClaim("three", 0, 1, 2)
	all := sliceClaim("all", 0, 1, 2, 3, 4, 5, 6, 7)
	resp, err := kubelet.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{ref(three), ref(all)}})
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Claims[string(three.UID)]
	if got.GetError() != "" || len(got.GetDevices()) != 3 {
		t.Fatalf("the 3-slice claim: %+v", got)
	}
	for _, d := range got.Devices {
		if d.CdiDeviceIds[0] != dra.CDIDeviceID(three.UID) {
			t.Errorf("device %s: CDI %v, want the claim's", d.DeviceName, d.CdiDeviceIds)
		}
	}
	spec, err := os.ReadFile(filepath.Join(n.dir, "cdi", "gpuslice-claim-"+string(three.UID)+".json"))
	if err != nil || !strings.Contains(string(spec), "GPUSLICE_SLICES=3") {
		t.Errorf("the claim's CDI spec: %v\n%s", err, spec)
	}
	if resp.Claims[string(all.UID)].GetError() == "" {
		t.Errorf("8 more slices of a GPU with 5 left were prepared: %+v", resp.Claims[string(all.UID)])
	}
}
