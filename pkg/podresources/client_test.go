package podresources_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// cluster is a test node whose pod-resources API the client reads.
type cluster struct {
	plugin *kubeletstub.Plugin
	podres *kubeletstub.PodResources
	socket string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	n := kubeletstub.StartNode(t, fakegpu.PresetConfig("A100-40GB", 2), 4)
	return &cluster{plugin: n.Connection, podres: n.PodResources, socket: n.PodResourcesSocket}
}

func (c *cluster) client(t *testing.T, mod func(*podresources.Options)) *podresources.Client {
	t.Helper()
	o := podresources.DefaultOptions()
	o.Socket = c.socket
	o.MaxReconnectDelay = 200 * time.Millisecond
	if mod != nil {
		mod(&o)
	}
	cl, err := podresources.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestListAndGet(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a, err := c.plugin.Allocate(ctxT(t), "ml/train", "worker", 3)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.plugin.Allocate(ctxT(t), "web/infer", "server", 1)
	if err != nil {
		t.Fatal(err)
	}
	// A pod with other resources only is not ours to report.
	c.podres.SetExtraPods([]*podresourcesapi.PodResources{{Namespace: "x", Name: "cpu-only", Containers: []*podresourcesapi.ContainerResources{{
		Name: "c", Devices: []*podresourcesapi.ContainerDevices{{ResourceName: "example.com/fpga", DeviceIds: []string{"f0"}}},
	}}}})
	cl := c.client(t, nil)
	got, err := cl.List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []podresources.Assignment{
		{Namespace: "ml", Pod: "train", Container: "worker", DeviceIDs: a.DeviceIDs},
		{Namespace: "web", Pod: "infer", Container: "server", DeviceIDs: b.DeviceIDs},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List() (-want +got)\n%s", diff)
	}
	one, err := cl.Get(ctxT(t), "ml", "train")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want[:1], one); diff != "" {
		t.Errorf("Get() (-want +got)\n%s", diff)
	}
	c.podres.DisableGet(true)
	if _, err := cl.Get(ctxT(t), "ml", "train"); !errors.Is(err, podresources.ErrGetUnsupported) {
		t.Errorf("Get() without the feature gate = %v, want ErrGetUnsupported", err)
	}
}

func TestLargeAnswer(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	// About 6 MiB of pods: over gRPC's default 4 MiB receive limit.
	var pods []*podresourcesapi.PodResources
	for i := range 3000 {
		pods = append(pods, &podresourcesapi.PodResources{Namespace: "bulk", Name: fmt.Sprintf("pod-%04d-%s", i, strings.Repeat("x", 1900)),
			Containers: []*podresourcesapi.ContainerResources{{Name: "main", Devices: []*podresourcesapi.ContainerDevices{{ResourceName: "nvidia.com/vgpu", DeviceIds: []string{fmt.Sprintf("GPU-x::%d", i)}}}}}})
	}
	c.podres.SetExtraPods(pods)
	got, err := c.client(t, nil).List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3000 {
		t.Fatalf("List() = %d assignments, want 3000", len(got))
	}
	small := c.client(t, func(o *podresources.Options) { o.MaxMessageSize = 1 << 20 })
	if _, err := small.List(ctxT(t)); err == nil {
		t.Fatal("List() with a 1 MiB limit succeeded on a 6 MiB answer; the limit is not applied")
	}
}

func TestKubeletGoesAwayAndComesBack(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	if _, err := c.plugin.Allocate(ctxT(t), "ml/train", "worker", 2); err != nil {
		t.Fatal(err)
	}
	cl := c.client(t, nil)
	if _, err := cl.List(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	c.podres.Stop()
	if _, err := cl.List(ctxT(t)); err == nil || !strings.Contains(err.Error(), c.socket) {
		t.Fatalf("List() with the kubelet gone = %v, want an error naming the socket", err)
	}
	if err := c.podres.Restart(); err != nil {
		t.Fatal(err)
	}
	// The same client recovers by itself, within the bounded reconnect delay.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := cl.List(ctxT(t))
		if err == nil && len(got) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client did not recover after the kubelet came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCallTimeout(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	c.podres.SetListHook(func() { <-release })
	cl := c.client(t, func(o *podresources.Options) { o.CallTimeout = 100 * time.Millisecond })
	if _, err := cl.List(ctxT(t)); err == nil || !strings.Contains(err.Error(), "DeadlineExceeded") {
		t.Fatalf("List() against a stuck kubelet = %v, want a deadline error", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	for name, mod := range map[string]func(*podresources.Options){
		"relative socket": func(o *podresources.Options) { o.Socket = "kubelet.sock" },
		"no resource":     func(o *podresources.Options) { o.ResourceName = "" },
		"tiny messages":   func(o *podresources.Options) { o.MaxMessageSize = 1024 },
		"no timeout":      func(o *podresources.Options) { o.CallTimeout = 0 },
	} {
		o := podresources.DefaultOptions()
		mod(&o)
		if _, err := podresources.New(o); err == nil {
			t.Errorf("%s: New() accepted invalid options", name)
		}
	}
}

// TestListDRAClaims: a container's claims of gpuslice's DRA driver are
// read from the CDI device names the kubelet lists; another driver's
// devices, another CDI kind and a client not asked for DRA list none.
func TestListDRAClaims(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	cdi := func(names ...string) []*podresourcesapi.CDIDevice {
		var out []*podresourcesapi.CDIDevice
		for _, n := range names {
			out = append(out, &podresourcesapi.CDIDevice{Name: n})
		}
		return out
	}
	c.podres.SetExtraPods([]*podresourcesapi.PodResources{{Namespace: "ml", Name: "train", Containers: []*podresourcesapi.ContainerResources{
		{Name: "worker", DynamicResources: []*podresourcesapi.DynamicResource{
			{ClaimName: "b", ClaimNamespace: "ml", ClaimResources: []*podresourcesapi.ClaimResource{
				{DriverName: contract.DRADriverName, PoolName: "n1", DeviceName: "gpu-0", CdiDevices: cdi(contract.DRACDIKind + "=uid-b")},
			}},
			{ClaimName: "a", ClaimNamespace: "ml", ClaimResources: []*podresourcesapi.ClaimResource{
				{DriverName: contract.DRADriverName, PoolName: "n1", DeviceName: "gpu-1", CdiDevices: cdi(contract.DRACDIKind+"=uid-a", "other.example/x=1")},
				{DriverName: contract.DRADriverName, PoolName: "n1", DeviceName: "gpu-0", CdiDevices: cdi(contract.DRACDIKind + "=uid-a")},
			}},
		}},
		{Name: "nic", DynamicResources: []*podresourcesapi.DynamicResource{
			{ClaimName: "n", ClaimNamespace: "ml", ClaimResources: []*podresourcesapi.ClaimResource{
				{DriverName: "nic.example.com", CdiDevices: cdi(contract.DRACDIKind + "=uid-spoofed")},
			}},
		}},
		{Name: "sidecar"},
	}}})
	got, err := c.client(t, func(o *podresources.Options) { o.DRADriver = contract.DRADriverName }).List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	// With DRA, every container is listed, holding or not.
	want := []podresources.Assignment{
		{Namespace: "ml", Pod: "train", Container: "nic"},
		{Namespace: "ml", Pod: "train", Container: "sidecar"},
		{Namespace: "ml", Pod: "train", Container: "worker", Claims: []string{"uid-a", "uid-b"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List() with DRA (-want +got)\n%s", diff)
	}
	got, err = c.client(t, nil).List(ctxT(t))
	if err != nil || len(got) != 0 {
		t.Errorf("List() without DRA = %+v, %v; want nothing", got, err)
	}
}
