package deviceplugin_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

func migDevices(t *testing.T, gpus ...fakegpu.GPUConfig) []nvml.Device {
	t.Helper()
	n, err := fakegpu.New(fakegpu.Config{GPUs: gpus})
	if err != nil {
		t.Fatal(err)
	}
	devs, err := n.Devices()
	if err != nil {
		t.Fatal(err)
	}
	return devs
}

func migGPU(profiles ...string) fakegpu.GPUConfig {
	g := fakegpu.GPUConfig{Preset: "A100-80GB", MIG: fakegpu.MIGConfig{Mode: "enabled"}}
	for _, p := range profiles {
		g.MIG.Instances = append(g.MIG.Instances, fakegpu.MIGInstanceConfig{Profile: p})
	}
	return g
}

func TestMIGResources(t *testing.T) {
	t.Parallel()
	whole := fakegpu.GPUConfig{Preset: "A100-80GB"}
	pending := fakegpu.GPUConfig{Preset: "A100-80GB", MIG: fakegpu.MIGConfig{Pending: "enabled"}}
	tests := map[string]struct {
		gpus     []fakegpu.GPUConfig
		strategy string
		want     map[string]int
		wantErr  string
	}{
		"mixed":                      {gpus: []fakegpu.GPUConfig{migGPU("1g.10gb", "1g.10gb", "1g.10gb+me", "3g.40gb"), whole, pending}, strategy: "mixed", want: map[string]int{"nvidia.com/mig-1g.10gb": 2, "nvidia.com/mig-1g.10gb.me": 1, "nvidia.com/mig-3g.40gb": 1}},
		"none":                       {gpus: []fakegpu.GPUConfig{migGPU("7g.80gb")}, strategy: "none", want: map[string]int{}},
		"dra":                        {gpus: []fakegpu.GPUConfig{migGPU("7g.80gb")}, strategy: "dra", want: map[string]int{}},
		"single":                     {gpus: []fakegpu.GPUConfig{migGPU("2g.20gb", "2g.20gb"), migGPU("2g.20gb")}, strategy: "single", want: map[string]int{"nvidia.com/gpu": 3}},
		"single beside a whole GPU":  {gpus: []fakegpu.GPUConfig{migGPU("2g.20gb"), whole}, strategy: "single", wantErr: "gpu 1"},
		"single with two profiles":   {gpus: []fakegpu.GPUConfig{migGPU("2g.20gb", "3g.40gb")}, strategy: "single", wantErr: "3g.40gb instances beside 2g.20gb"},
		"single with a pending mode": {gpus: []fakegpu.GPUConfig{migGPU("2g.20gb"), pending}, strategy: "single", wantErr: "gpu 1"},
		"unknown strategy":           {gpus: []fakegpu.GPUConfig{whole}, strategy: "all", wantErr: `"all"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := deviceplugin.MIGResources(migDevices(t, tc.gpus...), tc.strategy)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			counts := map[string]int{}
			for r, devs := range got {
				counts[r] = len(devs)
			}
			if d := cmp.Diff(tc.want, counts); d != "" {
				t.Errorf("resources (-want +got):\n%s", d)
			}
		})
	}
}

func migPlugin(t *testing.T, opts deviceplugin.Options) (*deviceplugin.MIGPlugin, []deviceplugin.MIGDevice) {
	t.Helper()
	devs := migDevices(t, migGPU("1g.10gb", "1g.10gb"), migGPU("1g.10gb"))
	res, err := deviceplugin.MIGResources(devs, "mixed")
	if err != nil {
		t.Fatal(err)
	}
	opts.PluginDir = t.TempDir()
	p, err := deviceplugin.NewMIG("nvidia.com/mig-1g.10gb", res["nvidia.com/mig-1g.10gb"], opts)
	if err != nil {
		t.Fatal(err)
	}
	return p, res["nvidia.com/mig-1g.10gb"]
}

func allocate(p *deviceplugin.MIGPlugin, ids ...string) (*pluginapi.AllocateResponse, error) {
	return p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
}

func TestMIGPluginAllocate(t *testing.T) {
	t.Parallel()
	opts := deviceplugin.DefaultOptions()
	opts.CDI.Enabled = true
	p, devs := migPlugin(t, opts)
	a, b := devs[0], devs[2] // on GPU 0 and GPU 1
	r, err := allocate(p, b.UUID, a.UUID)
	if err != nil {
		t.Fatal(err)
	}
	c := r.ContainerResponses[0]
	if got, want := c.Envs["NVIDIA_VISIBLE_DEVICES"], strings.Join(slices.Sorted(slices.Values([]string{a.UUID, b.UUID})), ","); got != want {
		t.Errorf("NVIDIA_VISIBLE_DEVICES=%q, want %q", got, want)
	}
	if got := slices.Collect(maps.Keys(c.Envs)); len(got) != 1 {
		t.Errorf("envs %v, want NVIDIA_VISIBLE_DEVICES alone", got)
	}
	var cdi []string
	for _, d := range c.CdiDevices {
		cdi = append(cdi, d.Name)
	}
	if d := cmp.Diff([]string{"nvidia.com/gpu=" + b.UUID, "nvidia.com/gpu=" + a.UUID}, cdi); d != "" {
		t.Errorf("CDI devices (-want +got):\n%s", d)
	}
	var nodes []string
	for _, d := range c.Devices {
		nodes = append(nodes, d.HostPath)
	}
	for _, want := range []string{"/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"} {
		if !slices.Contains(nodes, want) {
			t.Errorf("device nodes %v lack %s", nodes, want)
		}
	}
	if len(nodes) != 3+2+4 {
		t.Errorf("%d device nodes %v, want 9 (3 control, 2 GPUs, 2 capabilities per instance)", len(nodes), nodes)
	}

	for name, ids := range map[string][]string{
		"unknown": {"MIG-00000000-0000-0000-0000-000000000000"},
		"twice":   {a.UUID, a.UUID},
		"none":    {},
	} {
		if _, err := allocate(p, ids...); err == nil {
			t.Errorf("%s: allocated", name)
		}
	}
	p.SetHealth(nvml.Health{UUID: a.Parent.UUID, Reason: nvml.ReasonXID, XID: 79})
	if _, err := allocate(p, a.UUID); err == nil || !strings.Contains(err.Error(), "xid 79") {
		t.Errorf("an instance on a GPU with XID 79: err %v", err)
	}
	if _, err := allocate(p, b.UUID); err != nil {
		t.Errorf("the instance on the healthy GPU: %v", err)
	}
}

func TestMIGPluginNeedsCapabilityNodes(t *testing.T) {
	t.Parallel()
	devs := migDevices(t, migGPU("1g.10gb"))
	res, _ := deviceplugin.MIGResources(devs, "mixed")
	in := res["nvidia.com/mig-1g.10gb"]
	in[0].GICapMinor = -1
	opts := deviceplugin.DefaultOptions()
	opts.PluginDir = t.TempDir()
	if _, err := deviceplugin.NewMIG("nvidia.com/mig-1g.10gb", in, opts); err == nil || !strings.Contains(err.Error(), "mig-minors") {
		t.Fatalf("err %v, want the capability nodes named", err)
	}
	opts.DeviceSpecs = false
	if _, err := deviceplugin.NewMIG("nvidia.com/mig-1g.10gb", in, opts); err != nil {
		t.Fatalf("without device nodes: %v", err)
	}
}

// TestMIGSlices: the slices of a sliced profile's instances, each a
// quarter of its instance; a container gets its instance's MIG UUID, its
// GPU's device node and the instance's capability nodes, and the CDI name
// of the instance (never its GPU's index, which would hand out the whole
// GPU); a request two instances would hold is refused (CUDA sees one MIG
// device per process), and so is one for an instance verify says is gone.
func TestMIGSlices(t *testing.T) {
	t.Parallel()
	devs := migDevices(t, migGPU("3g.40gb", "3g.40gb"))
	for i := range devs[0].MIG.Instances {
		devs[0].MIG.Instances[i].GICapMinor, devs[0].MIG.Instances[i].CICapMinor = 100+2*i, 101+2*i
	}
	cfg := vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 8}, MIGProfiles: map[string]vgpu.Rule{"3g.40gb": {SlicesPerGPU: 4}}}
	l, byProfile, err := deviceplugin.MIGSliceLayout(devs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(byProfile) != 1 || len(byProfile["3g.40gb"]) != 2 || l.TotalSlices() != 8 {
		t.Fatalf("cut %v, %d slices; want the two 3g.40gb instances in 4 slices each", byProfile, l.TotalSlices())
	}
	opts := deviceplugin.DefaultOptions()
	opts.PluginDir, opts.DeviceSpecs, opts.CDI.Enabled, opts.CDI.NameStrategy = t.TempDir(), true, true, "index"
	gone := ""
	p, err := deviceplugin.NewMIGSlices("nvidia.com/vgpu-mig-3g.40gb", l, byProfile["3g.40gb"], opts, func(uuids []string) error {
		if slices.Contains(uuids, gone) {
			return fmt.Errorf("MIG instance %s no longer exists", gone)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	in := byProfile["3g.40gb"][1]
	resp, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{in.UUID + "::2"}}}})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.GetContainerResponses()[0]
	if r.Envs["NVIDIA_VISIBLE_DEVICES"] != in.UUID || r.Envs["GPUSLICE_COMPUTE_LIMIT_RATIO"] != "0.25" {
		t.Errorf("envs %v", r.Envs)
	}
	var paths []string
	for _, d := range r.Devices {
		paths = append(paths, d.ContainerPath)
	}
	for _, want := range []string{"/dev/nvidia0", fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", in.GICapMinor), fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", in.CICapMinor)} {
		if !slices.Contains(paths, want) {
			t.Errorf("device nodes %v lack %s", paths, want)
		}
	}
	if got := r.CdiDevices; len(got) != 1 || got[0].Name != fmt.Sprintf("nvidia.com/gpu=0:%d", in.Index) {
		t.Errorf("CDI devices %v, want the instance's 0:%d", got, in.Index)
	}
	other := byProfile["3g.40gb"][0]
	if _, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{in.UUID + "::0", other.UUID + "::0"}}}}); err == nil {
		t.Error("a request spanning two instances was granted")
	}
	gone = in.UUID
	if _, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{in.UUID + "::3"}}}}); err == nil || !strings.Contains(err.Error(), "no longer exists") {
		t.Errorf("a gone instance's slice: %v", err)
	}
}

// TestMIGSetSlicesHealth: a sliced instance's slices are refused while its
// GPU is unhealthy, and while an XID the driver put on the instance
// itself lasts; the GPU's other instance is untouched by that one.
func TestMIGSetSlicesHealth(t *testing.T) {
	t.Parallel()
	devs := migDevices(t, migGPU("3g.40gb", "3g.40gb"))
	cfg := vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 8}, MIGProfiles: map[string]vgpu.Rule{"3g.40gb": {SlicesPerGPU: 2}}}
	opts := deviceplugin.DefaultOptions()
	opts.PluginDir = t.TempDir()
	s, err := deviceplugin.NewMIGSet(devs, deviceplugin.MIGMixed, cfg, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Resources(); !slices.Equal(got, []string{"nvidia.com/vgpu-mig-3g.40gb"}) {
		t.Fatalf("resources %v, want the sliced profile's alone", got)
	}
	p := s.SlicePlugin("nvidia.com/vgpu-mig-3g.40gb")
	a, b := devs[0].MIG.Instances[0].UUID, devs[0].MIG.Instances[1].UUID
	grant := func(uuid string) error {
		_, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{uuid + "::0"}}}})
		return err
	}
	s.SetHealth(nvml.Health{UUID: devs[0].UUID, Reason: nvml.ReasonXID, XID: 79})
	if grant(a) == nil || grant(b) == nil {
		t.Error("slices of an unhealthy GPU's instances granted")
	}
	s.SetHealth(nvml.Health{UUID: devs[0].UUID, Healthy: true, Reason: nvml.ReasonRecovered})
	s.SetHealth(nvml.Health{UUID: a, Parent: devs[0].UUID, Reason: nvml.ReasonXID, XID: 94})
	if grant(a) == nil {
		t.Error("a slice of the instance with an XID granted")
	}
	if err := grant(b); err != nil {
		t.Errorf("the other instance's slice refused: %v", err)
	}
	if _, err := deviceplugin.NewMIGSet(devs, deviceplugin.MIGSingle, cfg, opts, nil); err == nil || !strings.Contains(err.Error(), "needs --mig-strategy=mixed") {
		t.Errorf("sliced profiles under the single strategy: %v", err)
	}
}

// TestMIGSetSlicesOfAGoneInstance: an instance destroyed since the slices
// were cut is never handed out, even before the agent restarts for the
// change: every Allocate reads the GPUs as they are.
func TestMIGSetSlicesOfAGoneInstance(t *testing.T) {
	t.Parallel()
	devs := migDevices(t, migGPU("3g.40gb", "3g.40gb"))
	cfg := vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 8}, MIGProfiles: map[string]vgpu.Rule{"3g.40gb": {SlicesPerGPU: 2}}}
	now := slices.Clone(devs)
	now[0].MIG.Instances = now[0].MIG.Instances[1:] // the first is destroyed
	opts := deviceplugin.DefaultOptions()
	opts.PluginDir = t.TempDir()
	s, err := deviceplugin.NewMIGSet(devs, deviceplugin.MIGMixed, cfg, opts, func() ([]nvml.Device, error) { return now, nil })
	if err != nil {
		t.Fatal(err)
	}
	if why := s.SlicedChange(now); !strings.Contains(why, "is gone") {
		t.Errorf("SlicedChange = %q", why)
	}
	p := s.SlicePlugin("nvidia.com/vgpu-mig-3g.40gb")
	grant := func(uuid string) error {
		_, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{uuid + "::0"}}}})
		return err
	}
	if err := grant(devs[0].MIG.Instances[0].UUID); err == nil || !strings.Contains(err.Error(), "no longer exists") {
		t.Errorf("a slice of the destroyed instance: %v", err)
	}
	if err := grant(devs[0].MIG.Instances[1].UUID); err != nil {
		t.Errorf("a slice of the surviving instance: %v", err)
	}
}
