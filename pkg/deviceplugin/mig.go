package deviceplugin

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// MIG strategies, named as NVIDIA's device plugin names them, so that pod
// specs written for it work unchanged (defined once, in package contract).
const (
	// MIGNone serves no MIG instance: another component (NVIDIA's device
	// plugin) does, or nobody.
	MIGNone = contract.MIGStrategyNone
	// MIGDRA leaves the MIG instances to gpuslice's DRA driver, which
	// publishes each as a device of its own; the device plugin offers none.
	MIGDRA = contract.MIGStrategyDRA
	// MIGSingle offers every instance as nvidia.com/gpu; every GPU on the
	// node must be in MIG mode with instances of one profile.
	MIGSingle = contract.MIGStrategySingle
	// MIGMixed offers each profile's instances as nvidia.com/mig-<profile>.
	MIGMixed = contract.MIGStrategyMixed
)

// MIGStrategies lists the strategies --mig-strategy accepts.
var MIGStrategies = []string{MIGMixed, MIGSingle, MIGDRA, MIGNone}

// MIGDevice is one MIG instance the node offers, with its GPU.
type MIGDevice struct {
	nvml.MIGInstance
	// Parent is the GPU the instance is on.
	Parent nvml.Device
}

// MIGResources groups the node's MIG instances by the resource each is
// offered under, by strategy. Under "single" every GPU must be in MIG
// mode (current and pending) with instances of one profile, or it is an
// error naming the first GPU that is not: NVIDIA's single strategy
// cannot describe a node that has other GPUs.
func MIGResources(devs []nvml.Device, strategy string) (map[string][]MIGDevice, error) {
	out := map[string][]MIGDevice{}
	switch strategy {
	case MIGNone, MIGDRA:
		return out, nil
	case MIGSingle, MIGMixed:
	default:
		return nil, fmt.Errorf("mig strategy %q: want one of %s", strategy, strings.Join(MIGStrategies, ", "))
	}
	profile := ""
	for _, d := range devs {
		if strategy == MIGSingle {
			if !d.MIG.Current || !d.MIG.Pending || len(d.MIG.Instances) == 0 {
				return nil, fmt.Errorf("mig strategy single: gpu %d (%s) is not in MIG mode with instances; every GPU on the node must be (use mixed)", d.Index, d.UUID)
			}
		}
		if !d.MIG.Current {
			continue
		}
		for _, in := range d.MIG.Instances {
			res := contract.MIGResource(in.Profile)
			if strategy == MIGSingle {
				if profile != "" && in.Profile != profile {
					return nil, fmt.Errorf("mig strategy single: gpu %d has %s instances beside %s; every instance must be of one profile (use mixed)", d.Index, in.Profile, profile)
				}
				profile, res = in.Profile, contract.MIGSingleResource
			}
			out[res] = append(out[res], MIGDevice{MIGInstance: in, Parent: d})
		}
	}
	return out, nil
}

// MIGPlugin offers one resource's MIG instances to the kubelet: each
// instance is one device, named by its MIG UUID as NVIDIA's device plugin
// names it, healthy while its GPU is. A container gets its instances in
// NVIDIA_VISIBLE_DEVICES, which CUDA and the NVIDIA container runtime
// read, and the device nodes MIG needs: its GPU's, and the capability
// nodes of its GPU and compute instances.
type MIGPlugin struct {
	pluginapi.UnimplementedDevicePluginServer
	endpoint

	opts Options
	// verify, when set, confirms before each Allocate that the instances
	// still exist on the GPU as it is now (a layout changed since the
	// plugin last heard would otherwise hand out a destroyed instance).
	verify func(ids []string) error

	mu      sync.Mutex
	devices map[string]MIGDevice   // by MIG UUID
	order   []string               // MIG UUIDs, sorted
	health  map[string]nvml.Health // by GPU UUID
	// instances is the health of instances the driver put an XID on, by
	// MIG UUID; an instance not here is as healthy as its GPU.
	instances map[string]nvml.Health
	changed   chan struct{}

	watchers atomic.Int64
}

var _ pluginapi.DevicePluginServer = (*MIGPlugin)(nil)

// NewMIG builds the plugin for resource, offering devs. opts gives the
// plugin dir, device nodes and CDI as for Plugin; its ResourceName and
// SocketName are replaced by the resource's. With DeviceSpecs on, an
// instance whose capability nodes the driver does not list cannot be
// handed out whole, so it is an error.
func NewMIG(resource string, devs []MIGDevice, opts Options) (*MIGPlugin, error) {
	opts.ResourceName = resource
	opts.SocketName = resourceSocket(resource)
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p := &MIGPlugin{opts: opts, health: map[string]nvml.Health{}, instances: map[string]nvml.Health{}, changed: make(chan struct{})}
	if err := p.SetDevices(devs); err != nil {
		return nil, err
	}
	p.endpoint = newEndpoint(opts, p, func() []any { return []any{"instances", p.count()} })
	p.noPreferred = true
	return p, nil
}

// SetDevices replaces the instances offered, as a layout change leaves
// them; ListAndWatch sends the new list at once. A GPU's health is kept
// across the change. On error nothing changes.
func (p *MIGPlugin) SetDevices(devs []MIGDevice) error {
	devices := map[string]MIGDevice{}
	order := make([]string, 0, len(devs))
	for _, d := range devs {
		if p.opts.DeviceSpecs && (d.GICapMinor < 0 || d.CICapMinor < 0) {
			return fmt.Errorf("%s: MIG instance %s on gpu %d: the driver lists no capability device for it (/proc/driver/nvidia-caps/mig-minors)", p.opts.ResourceName, d.UUID, d.Parent.Index)
		}
		if _, dup := devices[d.UUID]; dup {
			return fmt.Errorf("%s: MIG instance %s listed twice", p.opts.ResourceName, d.UUID)
		}
		devices[d.UUID] = d
		order = append(order, d.UUID)
	}
	sort.Strings(order)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.devices, p.order = devices, order
	for _, d := range devs {
		if _, ok := p.health[d.Parent.UUID]; !ok {
			p.health[d.Parent.UUID] = nvml.Health{UUID: d.Parent.UUID, Healthy: true}
		}
	}
	close(p.changed)
	p.changed = make(chan struct{})
	return nil
}

func (p *MIGPlugin) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.order)
}

// Run serves the plugin until ctx ends, as Plugin.Run does.
func (p *MIGPlugin) Run(ctx context.Context) error { return p.run(ctx) }

// Connected reports whether the plugin is registered and the kubelet
// holds its ListAndWatch stream open.
func (p *MIGPlugin) Connected() bool { return p.Registered() && p.watchers.Load() > 0 }

// SetHealth records a GPU's health, or one MIG instance's (Parent set):
// an instance is offered Unhealthy while it or its GPU is unhealthy.
// Reports for other GPUs are ignored.
func (p *MIGPlugin) SetHealth(h nvml.Health) {
	p.mu.Lock()
	defer p.mu.Unlock()
	states := p.health
	if h.Parent != "" {
		states = p.instances
	}
	prev, ok := states[h.UUID]
	switch {
	case h.Parent != "" && !ok:
		prev = nvml.Health{UUID: h.UUID, Healthy: true}
	case !ok:
		return
	}
	states[h.UUID] = h
	if prev.Healthy != h.Healthy {
		close(p.changed)
		p.changed = make(chan struct{})
	}
}

// healthOfLocked is an instance's health: its own when the driver put an
// XID on it, else its GPU's.
func (p *MIGPlugin) healthOfLocked(d MIGDevice) nvml.Health {
	if h, ok := p.instances[d.UUID]; ok && !h.Healthy {
		return h
	}
	return p.health[d.Parent.UUID]
}

// GetDevicePluginOptions asks for nothing beyond Allocate: every instance
// of a resource is alike.
func (p *MIGPlugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends every instance with its GPU's health, and again on
// every change, until the kubelet hangs up or the server stops.
func (p *MIGPlugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	p.watchers.Add(1)
	defer p.watchers.Add(-1)
	for {
		p.mu.Lock()
		devs := make([]*pluginapi.Device, 0, len(p.order))
		for _, id := range p.order {
			d := p.devices[id]
			h := pluginapi.Healthy
			if !p.healthOfLocked(d).Healthy {
				h = pluginapi.Unhealthy
			}
			dev := &pluginapi.Device{ID: id, Health: h}
			if d.Parent.NUMANode >= 0 {
				dev.Topology = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(d.Parent.NUMANode)}}}
			}
			devs = append(devs, dev)
		}
		changed := p.changed
		p.mu.Unlock()
		if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devs}); err != nil {
			return fmt.Errorf("send device list: %w", err)
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

// Allocate gives each container its instances. Every ID must name an
// instance of this resource on a healthy GPU, or the request fails naming
// the first bad one.
func (p *MIGPlugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.GetContainerRequests() {
		r, err := p.allocate(c.GetDevicesIds())
		if err != nil {
			return nil, err
		}
		if p.verify != nil {
			if err := p.verify(c.GetDevicesIds()); err != nil {
				return nil, status.Errorf(codes.FailedPrecondition, "%s: %v", p.resource, err)
			}
		}
		resp.ContainerResponses = append(resp.ContainerResponses, r)
		p.opts.Logger.Info("allocated", "resource", p.resource, "mig", r.Envs["NVIDIA_VISIBLE_DEVICES"])
	}
	return resp, nil
}

func (p *MIGPlugin) allocate(ids []string) (*pluginapi.ContainerAllocateResponse, error) {
	if len(ids) == 0 {
		return nil, status.Error(codes.InvalidArgument, "container request has no device IDs")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r := &pluginapi.ContainerAllocateResponse{Envs: map[string]string{}}
	seen := map[string]bool{}
	var specs []*pluginapi.DeviceSpec
	for _, id := range ids {
		d, ok := p.devices[id]
		switch {
		case !ok:
			return nil, status.Errorf(codes.InvalidArgument, "%s is not a MIG instance of %s on this node", id, p.resource)
		case seen[id]:
			return nil, status.Errorf(codes.InvalidArgument, "MIG instance %s asked for twice", id)
		case !p.healthOfLocked(d).Healthy:
			return nil, status.Errorf(codes.FailedPrecondition, "MIG instance %s (GPU %s) is unhealthy (%s)", id, d.Parent.UUID, describeHealth(p.healthOfLocked(d)))
		}
		seen[id] = true
		if p.opts.CDI.Enabled {
			r.CdiDevices = append(r.CdiDevices, &pluginapi.CDIDevice{Name: p.opts.CDI.Kind + "=" + p.cdiName(d)})
		}
		if p.opts.DeviceSpecs {
			specs = append(specs, p.spec("nvidia"+strconv.Itoa(d.Parent.Minor)),
				p.spec("nvidia-caps/nvidia-cap"+strconv.Itoa(d.GICapMinor)),
				p.spec("nvidia-caps/nvidia-cap"+strconv.Itoa(d.CICapMinor)))
		}
	}
	sorted := slices.Clone(ids)
	sort.Strings(sorted)
	r.Envs["NVIDIA_VISIBLE_DEVICES"] = strings.Join(sorted, ",")
	if p.opts.DeviceSpecs {
		for _, n := range []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"} {
			r.Devices = append(r.Devices, p.spec(n))
		}
		for _, s := range specs {
			if !slices.ContainsFunc(r.Devices, func(x *pluginapi.DeviceSpec) bool { return x.HostPath == s.HostPath }) {
				r.Devices = append(r.Devices, s)
			}
		}
	}
	return r, nil
}

// cdiName is an instance's CDI device name as NVIDIA's CDI spec
// generator writes it: its UUID, or "<gpu index>:<MIG index>".
func (p *MIGPlugin) cdiName(d MIGDevice) string {
	if p.opts.CDI.NameStrategy == "index" {
		return fmt.Sprintf("%d:%d", d.Parent.Index, d.Index)
	}
	return d.UUID
}

func (p *MIGPlugin) spec(n string) *pluginapi.DeviceSpec {
	return &pluginapi.DeviceSpec{ContainerPath: "/dev/" + n, HostPath: strings.TrimSuffix(p.opts.DevRoot, "/") + "/" + n, Permissions: "rw"}
}

// GetPreferredAllocation is not offered (GetDevicePluginOptions says so).
func (p *MIGPlugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return nil, status.Error(codes.Unimplemented, "every MIG instance of a resource is alike: no preference")
}

// PreStartContainer is not needed.
func (p *MIGPlugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// Resource is the resource name the plugin offers.
func (p *MIGPlugin) Resource() string { return p.resource }
