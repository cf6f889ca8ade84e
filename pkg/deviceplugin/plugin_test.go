package deviceplugin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

const resource = "nvidia.com/vgpu"

// env is one plugin on a fake node, served on real unix sockets in a temp
// dir, with the kubelet stand-in started or not.
type env struct {
	dir     string
	node    *fakegpu.Node
	devs    []nvml.Device
	layout  *vgpu.Layout
	plugin  *deviceplugin.Plugin
	kubelet *kubeletstub.Kubelet
	stop    func()
}

type setup struct {
	node      fakegpu.Config // default: 4 A100-40GB
	slices    int            // per GPU, default 4
	noKubelet bool
	configure func(*deviceplugin.Options)
}

func newEnv(t testing.TB, s setup) *env {
	t.Helper()
	if s.node.Preset == "" && len(s.node.GPUs) == 0 {
		s.node = fakegpu.PresetConfig("A100-40GB", 4)
	}
	if s.slices == 0 {
		s.slices = 4
	}
	e := &env{dir: t.TempDir()}
	var err error
	if e.node, err = fakegpu.New(s.node); err != nil {
		t.Fatal(err)
	}
	if e.devs, err = e.node.Devices(); err != nil {
		t.Fatal(err)
	}
	if e.layout, err = deviceplugin.NewLayout(e.devs, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: s.slices}}); err != nil {
		t.Fatal(err)
	}
	if !s.noKubelet {
		e.startKubelet(t)
	}
	e.startPlugin(t, s.configure)
	return e
}

func (e *env) startKubelet(t testing.TB) {
	t.Helper()
	k, err := kubeletstub.Start(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	e.kubelet = k
	t.Cleanup(k.Stop)
}

func (e *env) startPlugin(t testing.TB, configure func(*deviceplugin.Options)) {
	t.Helper()
	opts := deviceplugin.DefaultOptions()
	opts.PluginDir = e.dir
	opts.RegisterRetry = 50 * time.Millisecond
	if configure != nil {
		configure(&opts)
	}
	p, err := deviceplugin.New(e.layout, e.devs, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	healthDone := make(chan error, 1)
	go func() { runDone <- p.Run(ctx) }()
	go func() { healthDone <- e.node.WatchHealth(ctx, p.SetHealth) }()
	stopped := false
	e.plugin = p
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run() = %v", err)
		}
		if err := <-healthDone; err != nil {
			t.Errorf("WatchHealth() = %v", err)
		}
	}
	t.Cleanup(e.stop)
}

// waitReregistered waits for a Register call after the first before and
// for the stand-in to hold the plugin's full device list again.
func (e *env) waitReregistered(t *testing.T, before int) error {
	t.Helper()
	n := e.layout.TotalSlices()
	return e.kubelet.WaitFor(ctxT(t), func(k *kubeletstub.Kubelet) bool {
		p := k.PluginLocked(resource)
		return k.RegistrationCountLocked() > before && p != nil && len(p.DevicesLocked()) == n
	})
}

// waitPlugin waits for the stand-in to connect to the plugin.
func (e *env) waitPlugin(t *testing.T) *kubeletstub.Plugin {
	t.Helper()
	p, err := e.kubelet.WaitPlugin(ctxT(t), resource)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRegistrationAndDeviceList(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	p := e.waitPlugin(t)
	regs := e.kubelet.Registrations()
	want := &pluginapi.RegisterRequest{
		Version:      "v1beta1",
		Endpoint:     "gpuslice.sock",
		ResourceName: resource,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	}
	if diff := cmp.Diff(want, regs[0].Request, cmpopts.IgnoreUnexported(pluginapi.RegisterRequest{}, pluginapi.DevicePluginOptions{})); diff != "" {
		t.Errorf("Register request (-want +got)\n%s", diff)
	}
	if !p.Options().GetPreferredAllocationAvailable || p.Options().PreStartRequired {
		t.Errorf("GetDevicePluginOptions() = %+v", p.Options())
	}
	devs := p.Devices()
	if n := kubeletstub.CountHealth(devs, pluginapi.Healthy); n != 16 {
		t.Errorf("%d healthy devices, want 16", n)
	}
	var ids []string
	for _, d := range devs {
		ids = append(ids, d.ID)
	}
	var want16 []string
	for _, s := range e.layout.SliceIDs() {
		want16 = append(want16, s.String())
	}
	if diff := cmp.Diff(want16, ids, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("device IDs (-want +got)\n%s", diff)
	}
	// The kubelet may connect before the plugin's Register call has
	// returned; Registered follows within moments.
	deadline := time.Now().Add(5 * time.Second)
	for !e.plugin.Registered() {
		if time.Now().After(deadline) {
			t.Fatal("Registered() = false after registration")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := p.Client().PreStartContainer(ctxT(t), &pluginapi.PreStartContainerRequest{DevicesIds: ids[:1]}); err != nil {
		t.Errorf("PreStartContainer() = %v", err)
	}
}

// listAndWatch opens a stream of its own and returns its messages.
func listAndWatch(t *testing.T, e *env) <-chan []*pluginapi.Device {
	t.Helper()
	p := e.waitPlugin(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := p.Client().ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan []*pluginapi.Device, 16)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(ch)
				return
			}
			ch <- r.Devices
		}
	}()
	return ch
}

func nextList(t *testing.T, ch <-chan []*pluginapi.Device) []*pluginapi.Device {
	t.Helper()
	select {
	case d, ok := <-ch:
		if !ok {
			t.Fatal("ListAndWatch stream ended")
		}
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no ListAndWatch update within 10s")
	}
	return nil
}

// unhealthyGPUs returns, for one device list, the unhealthy slice count by GPU UUID.
func unhealthyGPUs(devs []*pluginapi.Device) map[string]int {
	out := map[string]int{}
	for _, d := range devs {
		if d.Health == pluginapi.Unhealthy {
			s, _ := vgpu.ParseSliceID(d.ID)
			out[s.UUID]++
		}
	}
	return out
}

// TestWithheldSlices: a node that cannot hold the shares it would hand out
// under --enforcement=required offers every slice Unhealthy in one update
// and refuses Allocate with the reason; offered again, they allocate.
func TestWithheldSlices(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	ch := listAndWatch(t, e)
	if got := unhealthyGPUs(nextList(t, ch)); len(got) != 0 {
		t.Fatalf("initial list has unhealthy slices: %v", got)
	}
	e.plugin.Withhold("the compute tier cannot engage (no-freezer)")
	want := map[string]int{}
	for _, d := range e.devs {
		want[d.UUID] = 4
	}
	if diff := cmp.Diff(want, unhealthyGPUs(nextList(t, ch))); diff != "" {
		t.Fatalf("withheld (-want +got)\n%s", diff)
	}
	p := e.kubelet.Plugin(resource)
	_, err := p.Client().Allocate(ctxT(t), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{e.devs[0].UUID + "::0"}},
	}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no-freezer") {
		t.Fatalf("Allocate while withheld = %v; want FailedPrecondition with the reason", err)
	}
	e.plugin.Withhold("")
	if got := unhealthyGPUs(nextList(t, ch)); len(got) != 0 {
		t.Fatalf("offered again, unhealthy slices remain: %v", got)
	}
	if e.plugin.Withheld() != "" {
		t.Errorf("Withheld() = %q after offering again", e.plugin.Withheld())
	}
}

func TestHealthXIDAndRecovery(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	ch := listAndWatch(t, e)
	if got := unhealthyGPUs(nextList(t, ch)); len(got) != 0 {
		t.Fatalf("initial list has unhealthy slices: %v", got)
	}
	if err := e.node.InjectXID(1, 79); err != nil {
		t.Fatal(err)
	}
	// One update marks all four slices of GPU 1, and nothing else.
	if diff := cmp.Diff(map[string]int{e.devs[1].UUID: 4}, unhealthyGPUs(nextList(t, ch))); diff != "" {
		t.Fatalf("after XID (-want +got)\n%s", diff)
	}
	// The other GPUs still allocate; GPU 1's slices are refused by name.
	p := e.kubelet.Plugin(resource)
	if err := e.kubelet.WaitFor(ctxT(t), func(k *kubeletstub.Kubelet) bool {
		return len(unhealthyGPUs(k.PluginLocked(resource).DevicesLocked())) == 1
	}); err != nil {
		t.Fatal(err)
	}
	a, err := p.Allocate(ctxT(t), "pod-a", "main", 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range a.DeviceIDs {
		if strings.HasPrefix(id, e.devs[1].UUID) {
			t.Errorf("allocated %s on the unhealthy GPU", id)
		}
	}
	// A further XID on the unhealthy GPU is recorded without another
	// device update: a refusal names the latest.
	if err := e.node.InjectXID(1, 48); err != nil {
		t.Fatal(err)
	}
	bad := e.devs[1].UUID + "::2"
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = p.Client().Allocate(ctxT(t), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{bad}}}})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), bad) {
			t.Fatalf("Allocate on unhealthy GPU = %v, want FailedPrecondition naming %s", err, bad)
		}
		if strings.Contains(err.Error(), "xid 48") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Allocate on unhealthy GPU = %v, want its latest xid, 48", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	if err := e.node.Lose(3); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{e.devs[1].UUID: 4, e.devs[3].UUID: 4}, unhealthyGPUs(nextList(t, ch))); diff != "" {
		t.Fatalf("after loss (-want +got)\n%s", diff)
	}
	if err := e.node.Recover(1); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{e.devs[3].UUID: 4}, unhealthyGPUs(nextList(t, ch))); diff != "" {
		t.Fatalf("after recovery of GPU 1 (-want +got)\n%s", diff)
	}
	if err := e.node.Recover(3); err != nil {
		t.Fatal(err)
	}
	if got := unhealthyGPUs(nextList(t, ch)); len(got) != 0 {
		t.Fatalf("after full recovery: %v", got)
	}
	if _, err := p.Client().Allocate(ctxT(t), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{bad}}}}); err != nil {
		t.Errorf("Allocate after recovery = %v", err)
	}
}

func TestPreferredAllocationThroughKubelet(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		policy vgpu.Policy
		// asks is the sequence of container requests; want is the GPU index
		// and slice indexes each gets.
		asks []int
		want [][]string
	}{
		"binpack": {
			policy: vgpu.Binpack,
			asks:   []int{3, 2, 1, 4},
			want:   [][]string{{"0:0", "0:1", "0:2"}, {"1:0", "1:1"}, {"0:3"}, {"2:0", "2:1", "2:2", "2:3"}},
		},
		"spread": {
			policy: vgpu.Spread,
			asks:   []int{3, 2, 1},
			want:   [][]string{{"0:0", "0:1", "0:2"}, {"1:0", "1:1"}, {"2:0"}},
		},
		"span only when no gpu fits": {
			policy: vgpu.Binpack,
			asks:   []int{3, 3, 3, 3, 4},
			want:   [][]string{{"0:0", "0:1", "0:2"}, {"1:0", "1:1", "1:2"}, {"2:0", "2:1", "2:2"}, {"3:0", "3:1", "3:2"}, {"0:3", "1:3", "2:3", "3:3"}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, setup{configure: func(o *deviceplugin.Options) { o.Placement = tc.policy }})
			p := e.waitPlugin(t)
			short := map[string]string{}
			for _, d := range e.devs {
				short[d.UUID] = fmt.Sprint(d.Index)
			}
			for i, n := range tc.asks {
				a, err := p.Allocate(ctxT(t), fmt.Sprintf("pod-%d", i), "main", n)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, id := range a.DeviceIDs {
					s, _ := vgpu.ParseSliceID(id)
					got = append(got, fmt.Sprintf("%s:%d", short[s.UUID], s.Index))
				}
				if diff := cmp.Diff(tc.want[i], got); diff != "" {
					t.Errorf("request %d for %d (-want +got)\n%s", i, n, diff)
				}
				if diff := cmp.Diff(a.Preferred, a.DeviceIDs); diff != "" {
					t.Errorf("kubelet did not take the preferred allocation (-preferred +got)\n%s", diff)
				}
			}
			// Over-request: the kubelet refuses it, nothing changes hands.
			before := p.Holders()
			if _, err := p.Allocate(ctxT(t), "greedy", "main", 17); !errors.Is(err, kubeletstub.ErrInsufficient) {
				t.Errorf("over-request = %v, want ErrInsufficient", err)
			}
			if diff := cmp.Diff(before, p.Holders()); diff != "" {
				t.Errorf("over-request changed holders (-before +after)\n%s", diff)
			}
		})
	}
}

func TestGetPreferredAllocationErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	p := e.waitPlugin(t)
	tests := map[string]struct {
		req  *pluginapi.ContainerPreferredAllocationRequest
		code codes.Code
		text string
	}{
		"malformed id":       {req: &pluginapi.ContainerPreferredAllocationRequest{AvailableDeviceIDs: []string{"bogus"}, AllocationSize: 1}, code: codes.InvalidArgument, text: "bogus"},
		"unknown gpu":        {req: &pluginapi.ContainerPreferredAllocationRequest{AvailableDeviceIDs: []string{"GPU-nope::0"}, AllocationSize: 1}, code: codes.InvalidArgument, text: "GPU-nope::0"},
		"size beyond":        {req: &pluginapi.ContainerPreferredAllocationRequest{AvailableDeviceIDs: []string{e.devs[0].UUID + "::0"}, AllocationSize: 2}, code: codes.FailedPrecondition, text: "2 slices requested"},
		"must not available": {req: &pluginapi.ContainerPreferredAllocationRequest{AvailableDeviceIDs: []string{e.devs[0].UUID + "::0"}, MustIncludeDeviceIDs: []string{e.devs[0].UUID + "::1"}, AllocationSize: 1}, code: codes.FailedPrecondition, text: e.devs[0].UUID + "::1"},
		"zero size":          {req: &pluginapi.ContainerPreferredAllocationRequest{AvailableDeviceIDs: []string{e.devs[0].UUID + "::0"}}, code: codes.FailedPrecondition, text: "size 0"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := p.Client().GetPreferredAllocation(ctxT(t), &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{tc.req}})
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("GetPreferredAllocation() = %v, want %v mentioning %q", err, tc.code, tc.text)
			}
		})
	}
}

func TestAllocateResponse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{configure: func(o *deviceplugin.Options) {
		o.DevRoot = "/host/dev"
		o.CDI.Enabled = true
		o.MPS.Enabled = true
		o.MPS.PipeDirectory = "/run/nvidia/mps"
	}})
	p := e.waitPlugin(t)
	g0, g2 := e.devs[0].UUID, e.devs[2].UUID
	resp, err := p.Client().Allocate(ctxT(t), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{g2 + "::3", g2 + "::1", g2 + "::0"}},
		{DevicesIds: []string{g2 + "::2", g0 + "::0"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	spec := func(n string) *pluginapi.DeviceSpec {
		return &pluginapi.DeviceSpec{ContainerPath: "/dev/" + n, HostPath: "/host/dev/" + n, Permissions: "rw"}
	}
	mount := []*pluginapi.Mount{{ContainerPath: "/run/nvidia/mps", HostPath: "/run/nvidia/mps"}}
	const slice = 40960 << 20 / 4
	want := []*pluginapi.ContainerAllocateResponse{
		{
			Envs: map[string]string{
				"NVIDIA_VISIBLE_DEVICES":            g2,
				"GPUSLICE_SLICE_IDS":                g2 + "::0," + g2 + "::1," + g2 + "::3",
				"GPUSLICE_SLICES":                   "3",
				"GPUSLICE_MEMORY_LIMIT_BYTES":       fmt.Sprint(3 * slice),
				"GPUSLICE_COMPUTE_LIMIT_RATIO":      "0.75",
				"CUDA_MPS_PIPE_DIRECTORY":           "/run/nvidia/mps",
				"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "75",
				"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  "0=30720M",
			},
			Devices:    []*pluginapi.DeviceSpec{spec("nvidiactl"), spec("nvidia-uvm"), spec("nvidia-uvm-tools"), spec("nvidia2")},
			CdiDevices: []*pluginapi.CDIDevice{{Name: "nvidia.com/gpu=" + g2}},
			Mounts:     mount,
		},
		{
			Envs: map[string]string{
				"NVIDIA_VISIBLE_DEVICES":            g0 + "," + g2,
				"GPUSLICE_SLICE_IDS":                strings.Join(sortedIDs(g2+"::2", g0+"::0"), ","),
				"GPUSLICE_SLICES":                   "1,1",
				"GPUSLICE_MEMORY_LIMIT_BYTES":       fmt.Sprintf("%d,%d", slice, slice),
				"GPUSLICE_COMPUTE_LIMIT_RATIO":      "0.25,0.25",
				"CUDA_MPS_PIPE_DIRECTORY":           "/run/nvidia/mps",
				"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
				"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":  "0=10240M,1=10240M",
			},
			Devices:    []*pluginapi.DeviceSpec{spec("nvidiactl"), spec("nvidia-uvm"), spec("nvidia-uvm-tools"), spec("nvidia0"), spec("nvidia2")},
			CdiDevices: []*pluginapi.CDIDevice{{Name: "nvidia.com/gpu=" + g0}, {Name: "nvidia.com/gpu=" + g2}},
			Mounts:     mount,
		},
	}
	ignore := cmpopts.IgnoreUnexported(pluginapi.ContainerAllocateResponse{}, pluginapi.DeviceSpec{}, pluginapi.CDIDevice{}, pluginapi.Mount{})
	if diff := cmp.Diff(want, resp.ContainerResponses, ignore); diff != "" {
		t.Errorf("Allocate() (-want +got)\n%s", diff)
	}
}

func sortedIDs(ids ...string) []string {
	out := append([]string(nil), ids...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestAllocateMinimalAndCDIIndex(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{configure: func(o *deviceplugin.Options) {
		o.DeviceSpecs = false
		o.CDI = deviceplugin.CDIOptions{Enabled: true, Kind: "example.com/gpu", NameStrategy: "index"}
	}})
	p := e.waitPlugin(t)
	resp, err := p.Client().Allocate(ctxT(t), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{e.devs[3].UUID + "::1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.ContainerResponses[0]
	if len(r.Devices) != 0 || len(r.Mounts) != 0 || r.Envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] != "" {
		t.Errorf("devices %v mounts %v envs %v: want no device specs and no MPS", r.Devices, r.Mounts, r.Envs)
	}
	if len(r.CdiDevices) != 1 || r.CdiDevices[0].Name != "example.com/gpu=3" {
		t.Errorf("CDI devices = %v, want example.com/gpu=3", r.CdiDevices)
	}
}

func TestAllocateErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	p := e.waitPlugin(t)
	g := e.devs[0].UUID
	tests := map[string]struct {
		ids  [][]string
		text string
	}{
		"malformed":          {ids: [][]string{{g + "::0", "not-an-id"}}, text: "not-an-id"},
		"unknown gpu":        {ids: [][]string{{"GPU-00000000-0000-0000-0000-000000000000::0"}}, text: "GPU-00000000-0000-0000-0000-000000000000::0"},
		"index beyond":       {ids: [][]string{{g + "::4"}}, text: g + "::4"},
		"duplicate":          {ids: [][]string{{g + "::1", g + "::1"}}, text: g + "::1"},
		"empty container":    {ids: [][]string{{}}, text: "no device IDs"},
		"bad second request": {ids: [][]string{{g + "::0"}, {"x::y"}}, text: "x::y"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req := &pluginapi.AllocateRequest{}
			for _, ids := range tc.ids {
				req.ContainerRequests = append(req.ContainerRequests, &pluginapi.ContainerAllocateRequest{DevicesIds: ids})
			}
			_, err := p.Client().Allocate(ctxT(t), req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("Allocate() = %v, want InvalidArgument naming %q", err, tc.text)
			}
		})
	}
}

func registrations(k *kubeletstub.Kubelet) int { return len(k.Registrations()) }

func TestKubeletRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	p := e.waitPlugin(t)
	held, err := p.Allocate(ctxT(t), "pod-a", "main", 3)
	if err != nil {
		t.Fatal(err)
	}
	before := registrations(e.kubelet)
	if err := e.kubelet.Restart(); err != nil {
		t.Fatal(err)
	}
	// The plugin must notice by itself; its retry timer is far longer than
	// this wait, so only the fsnotify path can pass.
	if err := e.waitReregistered(t, before); err != nil {
		t.Fatalf("plugin did not re-register after kubelet restart: %v", err)
	}
	p = e.kubelet.Plugin(resource)
	a, err := p.Allocate(ctxT(t), "pod-b", "main", 4)
	if err != nil {
		t.Fatal(err)
	}
	assertDisjoint(t, held.DeviceIDs, a.DeviceIDs)
}

func TestKubeletRestartWithoutRetry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{configure: func(o *deviceplugin.Options) { o.RegisterRetry = time.Hour }})
	if _, err := e.kubelet.WaitPlugin(ctxT(t), resource); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		before := registrations(e.kubelet)
		if err := e.kubelet.Restart(); err != nil {
			t.Fatal(err)
		}
		if err := e.waitReregistered(t, before); err != nil {
			t.Fatalf("restart %d: plugin did not re-register: %v", i, err)
		}
	}
}

func TestPluginStartsBeforeKubelet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{noKubelet: true, configure: func(o *deviceplugin.Options) { o.RegisterRetry = time.Hour }})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(e.plugin.SocketPath()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("plugin socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if e.plugin.Registered() {
		t.Fatal("Registered() = true with no kubelet")
	}
	e.startKubelet(t)
	if _, err := e.kubelet.WaitPlugin(ctxT(t), resource); err != nil {
		t.Fatalf("plugin did not register when the kubelet appeared: %v", err)
	}
}

func TestAgentRestartKeepsIDsAndRemovesSocket(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	p := e.waitPlugin(t)
	first := p.Devices()
	held, err := p.Allocate(ctxT(t), "pod-a", "main", 2)
	if err != nil {
		t.Fatal(err)
	}
	e.stop()
	if _, err := os.Stat(filepath.Join(e.dir, "gpuslice.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after shutdown: %v", err)
	}
	before := registrations(e.kubelet)
	e.startPlugin(t, nil)
	if err := e.waitReregistered(t, before); err != nil {
		t.Fatal(err)
	}
	p = e.kubelet.Plugin(resource)
	ignore := cmpopts.IgnoreUnexported(pluginapi.Device{})
	if diff := cmp.Diff(first, p.Devices(), ignore); diff != "" {
		t.Errorf("device list changed across restart (-before +after)\n%s", diff)
	}
	a, err := p.Allocate(ctxT(t), "pod-b", "main", 14)
	if err != nil {
		t.Fatal(err)
	}
	assertDisjoint(t, held.DeviceIDs, a.DeviceIDs)
}

// runOne runs a plugin for one H100 in 2 slices on dir, with
// UniqueSocket as given, and returns it and a function stopping it that
// fails the test if Run failed.
func runOne(t *testing.T, dir string, unique bool) (*deviceplugin.Plugin, func()) {
	t.Helper()
	node, _ := fakegpu.New(fakegpu.PresetConfig("H100-80GB", 1))
	devs, _ := node.Devices()
	layout, _ := deviceplugin.NewLayout(devs, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 2}})
	opts := deviceplugin.DefaultOptions()
	opts.PluginDir, opts.UniqueSocket = dir, unique
	p, err := deviceplugin.New(layout, devs, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return p, func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	k, err := kubeletstub.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	// The stand-in clears sockets at start, as the kubelet does; put a
	// stale file there after it to check the plugin replaces it itself.
	if err := os.WriteFile(filepath.Join(dir, "gpuslice.sock"), []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stop := runOne(t, dir, false)
	if _, err := k.WaitPlugin(ctxT(t), resource); err != nil {
		t.Fatal(err)
	}
	stop()
}

func TestRunFailsOnMissingDir(t *testing.T) {
	t.Parallel()
	node, _ := fakegpu.New(fakegpu.PresetConfig("A100-40GB", 1))
	devs, _ := node.Devices()
	layout, _ := deviceplugin.NewLayout(devs, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 2}})
	opts := deviceplugin.DefaultOptions()
	opts.PluginDir = filepath.Join(t.TempDir(), "missing")
	p, err := deviceplugin.New(layout, devs, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Run() = %v, want an error naming the dir", err)
	}
}

func TestNewRejectsLayoutWithoutDevice(t *testing.T) {
	t.Parallel()
	layout, _ := vgpu.NewLayout([]vgpu.GPU{{UUID: "GPU-x", MemoryBytes: 1 << 30}}, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 2}})
	if _, err := deviceplugin.New(layout, nil, deviceplugin.DefaultOptions()); err == nil {
		t.Fatal("New() accepted a layout GPU with no device")
	}
}

func TestTopologyInDeviceList(t *testing.T) {
	t.Parallel()
	zero, one := 0, 1
	e := newEnv(t, setup{node: fakegpu.Config{GPUs: []fakegpu.GPUConfig{
		{Preset: "H100-80GB", NUMANode: &zero}, {Preset: "H100-80GB", NUMANode: &one}, {Preset: "H100-80GB"},
	}}, slices: 2})
	devs := e.devs
	p := e.waitPlugin(t)
	want := map[string]string{devs[0].UUID: "0", devs[1].UUID: "1", devs[2].UUID: "none"}
	for _, d := range p.Devices() {
		s, _ := vgpu.ParseSliceID(d.ID)
		got := "none"
		if d.Topology != nil {
			var ids []string
			for _, n := range d.Topology.Nodes {
				ids = append(ids, fmt.Sprint(n.ID))
			}
			got = strings.Join(ids, ",")
		}
		if got != want[s.UUID] {
			t.Errorf("slice %s topology = %s, want %s", d.ID, got, want[s.UUID])
		}
	}
}

// assertDisjoint fails the test for every slice in both a and b.
func assertDisjoint(t *testing.T, a, b []string) {
	t.Helper()
	for _, x := range a {
		for _, y := range b {
			if x == y {
				t.Errorf("slice %s handed out twice", x)
			}
		}
	}
}

// TestIdleClientsCannotHoldShutdownOrRestart: connections that never
// speak and streams that are never read must not delay the plugin's stop
// (grpc's Stop waits on unfinished handshakes for two minutes by default),
// so SIGTERM and re-registration after a kubelet restart stay prompt.
func TestIdleClientsCannotHoldShutdownOrRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	e.waitPlugin(t)
	sock := filepath.Join(e.dir, "gpuslice.sock")
	var idle []net.Conn
	for range 3 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	t.Cleanup(func() {
		for _, c := range idle {
			_ = c.Close()
		}
	})
	// Unread ListAndWatch streams from a client of the real API.
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	for range 3 {
		if _, err := pluginapi.NewDevicePluginClient(conn).ListAndWatch(context.Background(), &pluginapi.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	e.stop()
	// The bound is the plugin's own grace (one second, then a hard stop);
	// failing means minutes, not a slow machine.
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("stop took %v with idle clients connected", took)
	}
}

// TestConnectedNeedsALiveKubelet: /readyz follows Connected, which needs
// the kubelet to hold the plugin's ListAndWatch stream, not only a past
// registration.
func TestConnectedNeedsALiveKubelet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	e.waitPlugin(t)
	deadline := time.Now().Add(10 * time.Second)
	for !e.plugin.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("never connected to the live kubelet")
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.kubelet.Stop()
	for e.plugin.Connected() {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("still connected with the kubelet gone")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKubeletRestartsLeakNoDescriptors restarts the kubelet many times,
// each one making the plugin stop its server and serve and register
// again: the process's open descriptors stay flat (a server stopped
// without closing its listener or connections would grow them each time).
// Not parallel: it counts the whole test process's descriptors, and Go
// runs parallel tests only after the sequential ones.
func TestKubeletRestartsLeakNoDescriptors(t *testing.T) {
	e := newEnv(t, setup{})
	e.waitPlugin(t)
	fds := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	restarts := 60
	if testing.Short() {
		restarts = 10
	}
	var before int
	for i := range restarts {
		if i == 5 {
			before = fds() // after the first few have settled what they cache
		}
		n := registrations(e.kubelet)
		if err := e.kubelet.Restart(); err != nil {
			t.Fatal(err)
		}
		if err := e.waitReregistered(t, n); err != nil {
			t.Fatalf("restart %d: %v", i, err)
		}
	}
	time.Sleep(200 * time.Millisecond) // closed connections' goroutines finish
	after := fds()
	if after > before+10 {
		t.Errorf("%d open descriptors after %d kubelet restarts, %d before: a leak", after, restarts, before)
	}
	t.Logf("open descriptors: %d after 5 restarts, %d after %d", before, after, restarts)
}

// TestKubeletRestartRegistersOnce: back-to-back kubelet restarts, each
// acted on as soon as the new kubelet answers, and never a second
// registration with the same kubelet from the restart's later events (they
// are judged after the 1 s fallback has passed).
func TestKubeletRestartRegistersOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{configure: func(o *deviceplugin.Options) { o.RegisterRetry = time.Hour }})
	if _, err := e.kubelet.WaitPlugin(ctxT(t), resource); err != nil {
		t.Fatal(err)
	}
	first := registrations(e.kubelet)
	const restarts = 5
	for i := range restarts {
		before := registrations(e.kubelet)
		if err := e.kubelet.Restart(); err != nil {
			t.Fatal(err)
		}
		if err := e.waitReregistered(t, before); err != nil {
			t.Fatalf("restart %d: %v", i, err)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	if got := registrations(e.kubelet) - first; got != restarts {
		t.Errorf("%d registrations for %d kubelet restarts", got, restarts)
	}
}

// TestUniqueSocketsAcrossInstances: with UniqueSocket each instance
// serves its own path, so a successor registers while its predecessor is
// still connected (the kubelet refuses a second plugin on one path); at
// start it removes what killed instances left and nothing answers on, and
// leaves a running instance's socket alone.
func TestUniqueSocketsAcrossInstances(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	k, err := kubeletstub.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	stale := filepath.Join(dir, "gpuslice-killed.sock")
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	first, stopFirst := runOne(t, dir, true)
	if err := k.WaitFor(ctxT(t), func(k *kubeletstub.Kubelet) bool { return k.RegistrationCountLocked() == 1 }); err != nil {
		t.Fatal(err)
	}
	if matched, _ := filepath.Match(filepath.Join(dir, "gpuslice-*.sock"), first.SocketPath()); !matched {
		t.Errorf("socket %s is not gpuslice-<id>.sock", first.SocketPath())
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a killed instance's socket is still there: %v", err)
	}
	second, stopSecond := runOne(t, dir, true)
	if err := k.WaitFor(ctxT(t), func(k *kubeletstub.Kubelet) bool { return k.RegistrationCountLocked() == 2 }); err != nil {
		t.Fatal(err)
	}
	regs := k.Registrations()
	if second.SocketPath() == first.SocketPath() || regs[0].Request.GetEndpoint() == regs[1].Request.GetEndpoint() {
		t.Errorf("two instances registered the same endpoint: %+v", regs)
	}
	if _, err := os.Stat(first.SocketPath()); err != nil {
		t.Errorf("the running first instance's socket was removed: %v", err)
	}
	stopFirst()
	if _, err := os.Stat(second.SocketPath()); err != nil {
		t.Errorf("the second instance's socket went with the first: %v", err)
	}
	stopSecond()
	left, _ := filepath.Glob(filepath.Join(dir, "gpuslice*"))
	if len(left) != 0 {
		t.Errorf("sockets left after both stopped: %v", left)
	}
}

// TestNoSlicesLeavesTheResourceToDRA: with NoSlices the kubelet is told of
// no slice, so the node's allocatable nvidia.com/vgpu is 0 and the
// scheduler serves the resource through DRA's extended-resource mapping;
// a GPU turning unhealthy advertises nothing either.
func TestNoSlicesLeavesTheResourceToDRA(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{configure: func(o *deviceplugin.Options) { o.NoSlices = true }})
	ch := listAndWatch(t, e)
	if devs := nextList(t, ch); len(devs) != 0 {
		t.Fatalf("advertised %d slices, want none", len(devs))
	}
	e.plugin.SetHealth(nvml.Health{UUID: e.devs[0].UUID, Healthy: false, Reason: "xid 79"})
	if devs := nextList(t, ch); len(devs) != 0 {
		t.Fatalf("advertised %d slices after a health change, want none", len(devs))
	}
}

// TestSlowKubeletRestartRegistersOnce: a kubelet restart as the plugin
// directory shows it, whatever its timing: kubelet.sock gone for a range
// of gaps, the plugin's own socket removed or left in place. Each time the
// plugin registers with the new kubelet once, and says so in its log. The
// retry timer is far longer than the test, so only the directory watch can
// pass. Before, a socket left in place and a new kubelet.sock with the old
// one's inode number (ext4 reuses a freed inode at once) were not seen as
// a restart: the plugin never registered again.
func TestSlowKubeletRestartRegistersOnce(t *testing.T) {
	t.Parallel()
	for _, removePlugins := range []bool{false, true} {
		for _, gap := range []time.Duration{0, 5 * time.Millisecond, 200 * time.Millisecond, 1500 * time.Millisecond} {
			t.Run(fmt.Sprintf("gap %v, plugin socket removed %t", gap, removePlugins), func(t *testing.T) {
				t.Parallel()
				var logs syncBuffer
				e := newEnv(t, setup{configure: func(o *deviceplugin.Options) {
					o.RegisterRetry = time.Hour
					o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
				}})
				if _, err := e.kubelet.WaitPlugin(ctxT(t), resource); err != nil {
					t.Fatal(err)
				}
				for i := range 3 {
					before := registrations(e.kubelet)
					if err := e.kubelet.RestartAfter(gap, removePlugins); err != nil {
						t.Fatal(err)
					}
					if err := e.waitReregistered(t, before); err != nil {
						t.Fatalf("restart %d: the plugin did not register with the new kubelet: %v\n%s", i, err, logs.String())
					}
					time.Sleep(1200 * time.Millisecond) // past the 1 s fallback: a second registration would be in
					if got := registrations(e.kubelet) - before; got != 1 {
						t.Errorf("restart %d: %d registrations, want 1", i, got)
					}
				}
				if n := strings.Count(logs.String(), "re-registering"); n != 3 {
					t.Errorf("the log says re-registering %d times for 3 restarts:\n%s", n, logs.String())
				}
			})
		}
	}
}

// syncBuffer is a log sink the plugin's goroutines may write to while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSlicesOfDRAHeldGPUsAreUnhealthy: the review found the device plugin
// listing a GPU that DRA claims hold as Healthy and preferring its slices,
// so the kubelet picked them and its Allocate refused the pod
// (UnexpectedAdmissionError) while other GPUs were free. Now the slices of
// such a GPU are offered Unhealthy, with the reason logged, and
// GetPreferredAllocation never picks them; once the claims end they are
// offered again.
func TestSlicesOfDRAHeldGPUsAreUnhealthy(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	held := map[string]bool{}
	var logs syncBuffer
	e := newEnv(t, setup{configure: func(o *deviceplugin.Options) {
		o.DRAGPUs = func() (map[string]bool, error) {
			mu.Lock()
			defer mu.Unlock()
			return maps.Clone(held), nil
		}
		o.DRAPoll = 20 * time.Millisecond
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}})
	ch := listAndWatch(t, e)
	if got := unhealthyGPUs(nextList(t, ch)); len(got) != 0 {
		t.Fatalf("initial list has unhealthy slices: %v", got)
	}
	mu.Lock()
	held[e.devs[0].UUID] = true
	mu.Unlock()
	if diff := cmp.Diff(map[string]int{e.devs[0].UUID: 4}, unhealthyGPUs(nextList(t, ch))); diff != "" {
		t.Fatalf("GPU 0 held by claims (-want +got)\n%s", diff)
	}
	if !strings.Contains(logs.String(), "serves DRA claims") {
		t.Errorf("the reason was not logged:\n%s", logs.String())
	}
	// Offered every slice as available, it prefers none of GPU 0.
	var all []string
	for _, id := range e.layout.SliceIDs() {
		all = append(all, id.String())
	}
	p := e.kubelet.Plugin(resource)
	pref, err := p.Client().GetPreferredAllocation(ctxT(t), &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: all, AllocationSize: 2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range pref.ContainerResponses[0].DeviceIDs {
		if strings.HasPrefix(id, e.devs[0].UUID) {
			t.Errorf("preferred %v includes a slice of the GPU claims hold", pref.ContainerResponses[0].DeviceIDs)
		}
	}
	mu.Lock()
	delete(held, e.devs[0].UUID)
	mu.Unlock()
	if got := unhealthyGPUs(nextList(t, ch)); len(got) != 0 {
		t.Fatalf("claims gone, unhealthy slices remain: %v", got)
	}
}
