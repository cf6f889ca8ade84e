package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Environment variables Allocate sets in every container, besides
// NVIDIA_VISIBLE_DEVICES. Per-GPU values are comma-separated in the order of
// NVIDIA_VISIBLE_DEVICES, which is also the CUDA device order in the container.
// They are defined once, in package contract.
const (
	// EnvSliceIDs lists the slice IDs the container holds.
	EnvSliceIDs = contract.EnvSliceIDs
	// EnvSlices is the number of slices held, per GPU.
	EnvSlices = contract.EnvSlices
	// EnvMemoryLimit is the GPU memory the container may use in bytes, per GPU.
	EnvMemoryLimit = contract.EnvMemoryLimit
	// EnvComputeLimit is the share of the GPU's compute the container may
	// use, in 0..1, per GPU.
	EnvComputeLimit = contract.EnvComputeLimit
)

// Plugin is the device plugin for one node's slices. Create it with New and
// run it with Run; feed GPU health in with SetHealth.
type Plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	endpoint

	opts   Options
	log    *slog.Logger
	layout *vgpu.Layout
	minor  map[string]int // GPU UUID -> device node minor number
	// controlSpecs and gpuSpecs are Allocate's device nodes, built once.
	controlSpecs []*pluginapi.DeviceSpec
	gpuSpecs     map[string]*pluginapi.DeviceSpec
	numa         map[string]int // GPU UUID -> NUMA node, -1 when unknown
	// extraSpecs and cdiNames are, for slices of MIG instances
	// (NewMIGSlices), each instance's capability nodes and CDI name.
	extraSpecs map[string][]*pluginapi.DeviceSpec
	cdiNames   map[string]string
	// verify, when set, confirms before each Allocate that the GPUs (MIG
	// instances) still exist.
	verify func(uuids []string) error

	mu     sync.Mutex
	health map[string]nvml.Health // GPU UUID -> latest health
	// withheld, when set, is why no slice is offered at all (enforcement
	// the administrator required cannot engage on the node).
	withheld string
	// draHeld are the GPUs DRA claims hold, as last read: their slices
	// are offered Unhealthy and never preferred.
	draHeld map[string]bool
	// held are slices offered Unhealthy after a refused span; onOffered
	// is told how many are offered Healthy when that changes.
	held      holdBack
	onOffered func(healthy int)
	changed   chan struct{} // closed and replaced on every health change

	answers *responses // Allocate's responses, by request

	watchers atomic.Int64 // ListAndWatch streams open: the kubelet's
}

// NewLayout cuts the devices a backend found according to cfg.
func NewLayout(devices []nvml.Device, cfg vgpu.Config) (*vgpu.Layout, error) {
	gpus := make([]vgpu.GPU, len(devices))
	for i, d := range devices {
		gpus[i] = vgpu.GPU{UUID: d.UUID, Index: d.Index, Model: d.Model, MemoryBytes: d.MemoryBytes}
	}
	return vgpu.NewLayout(gpus, cfg)
}

// New builds a plugin serving layout. devices supplies the minor numbers of
// the layout's GPUs, for device nodes. Every GPU starts healthy.
func New(layout *vgpu.Layout, devices []nvml.Device, opts Options) (*Plugin, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Plugin{
		opts:       opts,
		log:        opts.Logger,
		layout:     layout,
		minor:      map[string]int{},
		numa:       map[string]int{},
		extraSpecs: map[string][]*pluginapi.DeviceSpec{},
		cdiNames:   map[string]string{},
		health:     map[string]nvml.Health{},
		answers:    newResponses(),
		changed:    make(chan struct{}),
	}
	p.endpoint = newEndpoint(opts, p, func() []any { return []any{"slices", p.layout.TotalSlices()} },
		// Kept Allocate responses go out as the bytes encoded once.
		grpc.ForceServerCodecV2(newCodec(p.answers)))
	for _, d := range devices {
		p.minor[d.UUID] = d.Minor
		p.numa[d.UUID] = d.NUMANode
	}
	p.buildDeviceSpecs()
	for _, g := range layout.GPUs() {
		if _, ok := p.minor[g.UUID]; !ok {
			return nil, fmt.Errorf("gpu %s is in the layout but not in the device list", g.UUID)
		}
		p.health[g.UUID] = nvml.Health{UUID: g.UUID, Healthy: true}
		p.log.Info("gpu", "gpu", g.Index, "uuid", g.UUID, "model", g.Model, "memory_bytes", g.MemoryBytes, "slices", g.Slices, "slice_memory_bytes", g.SliceMemoryBytes)
	}
	return p, nil
}

var _ pluginapi.DevicePluginServer = (*Plugin)(nil)

// SetHealth records a GPU's health, as gpuhealth.Monitor reports it (the
// plugin subscribes to the node's one record of GPU health); ListAndWatch
// streams a change of Healthy to the kubelet at once. Reports for GPUs
// outside the layout are ignored.
func (p *Plugin) SetHealth(h nvml.Health) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prev, ok := p.health[h.UUID]
	if !ok {
		return
	}
	p.health[h.UUID] = h
	if prev.Healthy == h.Healthy {
		return
	}
	p.notifyLocked()
}

// Withhold offers every slice as Unhealthy, and refuses every Allocate,
// for reason: the node cannot hold the shares it would hand out and the
// administrator asked for enforcement or nothing (--enforcement=required).
// An empty reason offers them again.
func (p *Plugin) Withhold(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.withheld == reason {
		return
	}
	p.withheld = reason
	p.notifyLocked()
	if reason != "" {
		p.log.Error("offering no slices: enforcement is required and cannot engage on this node", "reason", reason)
	}
}

// Withheld is why no slice is offered, or "".
func (p *Plugin) Withheld() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.withheld
}

// Connected reports whether the plugin is registered and the kubelet holds
// its ListAndWatch stream open, as a live kubelet does: a kubelet that
// died or restarted without taking the plugin back leaves none.
func (p *Plugin) Connected() bool { return p.Registered() && p.watchers.Load() > 0 }

// healthy is whether slices of a GPU may be preferred: it is healthy and
// no DRA claim holds it.
func (p *Plugin) healthy(uuid string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.health[uuid].Healthy && !p.draHeld[uuid]
}

// SetDRAHeld records the GPUs DRA claims hold: ListAndWatch offers their
// slices as Unhealthy (streamed at once on a change), and
// GetPreferredAllocation never picks them.
func (p *Plugin) SetDRAHeld(held map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if maps.Equal(p.draHeld, held) {
		return
	}
	for uuid := range held {
		if !p.draHeld[uuid] {
			p.log.Info("gpu serves DRA claims: its slices are offered Unhealthy", "uuid", uuid)
		}
	}
	for uuid := range p.draHeld {
		if !held[uuid] {
			p.log.Info("gpu no longer serves DRA claims: its slices are offered again", "uuid", uuid)
		}
	}
	p.draHeld = maps.Clone(held)
	p.notifyLocked()
}

// DRAHeld reports whether DRA claims hold a GPU, as last read.
func (p *Plugin) DRAHeld(uuid string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.draHeld[uuid]
}

// watchDRA reads DRAGPUs every DRAPoll until ctx ends. A read that fails
// keeps what was known (Allocate refuses every request meanwhile).
func (p *Plugin) watchDRA(ctx context.Context) {
	t := time.NewTicker(p.opts.DRAPoll)
	defer t.Stop()
	for {
		if held, err := p.opts.DRAGPUs(); err == nil {
			p.SetDRAHeld(held)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// offeredLocked is whether a slice is offered Healthy: its GPU is healthy
// and serves no DRA claim, the node offers slices, and it is not held back
// after a refused span. p.mu is held.
func (p *Plugin) offeredLocked(id vgpu.SliceID) bool {
	return p.health[id.UUID].Healthy && p.withheld == "" && !p.draHeld[id.UUID] && !p.held.ids[id.String()]
}

// snapshot returns the device list and the channel that closes when it next
// changes.
func (p *Plugin) snapshot() ([]*pluginapi.Device, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.opts.NoSlices {
		return []*pluginapi.Device{}, p.changed
	}
	ids := p.layout.SliceIDs()
	devs := make([]*pluginapi.Device, len(ids))
	for i, id := range ids {
		h := pluginapi.Healthy
		if !p.offeredLocked(id) {
			h = pluginapi.Unhealthy
		}
		devs[i] = &pluginapi.Device{ID: id.String(), Health: h}
		// The kubelet's topology manager aligns CPUs and memory with this.
		if n := p.numa[id.UUID]; n >= 0 {
			devs[i].Topology = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(n)}}}
		}
	}
	return devs, p.changed
}

// GetDevicePluginOptions tells the kubelet to ask for preferred allocations.
func (p *Plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

// ListAndWatch sends every slice with its health, then the whole list again
// on every health change, until the kubelet hangs up or the server stops.
func (p *Plugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	p.watchers.Add(1)
	defer p.watchers.Add(-1)
	for {
		devs, changed := p.snapshot()
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

// GetPreferredAllocation places each container's request with pkg/vgpu.
func (p *Plugin) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, c := range req.GetContainerRequests() {
		ids, err := p.layout.Place(vgpu.Request{
			Available:   c.GetAvailableDeviceIDs(),
			MustInclude: c.GetMustIncludeDeviceIDs(),
			Size:        int(c.GetAllocationSize()),
		}, p.opts.Placement, p.healthy)
		if err != nil {
			return nil, grpcError(err)
		}
		if p.opts.Span == contract.SpanNever && spans(ids) {
			return nil, p.refuseSpan(c.GetAvailableDeviceIDs(), int(c.GetAllocationSize()))
		}
		p.log.Debug("preferred allocation", "size", c.GetAllocationSize(), "available", len(c.GetAvailableDeviceIDs()), "preferred", strings.Join(ids, ","))
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// Allocate tells the runtime what each container gets. Every ID must name a
// slice of a healthy GPU, or the whole request fails naming the first bad ID.
//
// The response depends on the slice IDs alone, so it is built and encoded
// once per distinct request and kept; the GPUs' health is checked on every
// call.
func (p *Plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	key := requestKey(req)
	a := p.answers.get(key)
	if a == nil {
		a = &answer{resp: &pluginapi.AllocateResponse{}}
		for _, c := range req.GetContainerRequests() {
			if err := p.checkSpan(c.GetDevicesIds()); err != nil {
				return nil, err
			}
			r, slices, err := p.allocate(c.GetDevicesIds())
			if err != nil {
				return nil, err
			}
			a.resp.ContainerResponses = append(a.resp.ContainerResponses, r)
			a.slices = append(a.slices, slices)
		}
		if err := p.answers.put(key, a); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if err := p.checkHealth(a.slices); err != nil {
		return nil, err
	}
	if err := p.besideDRA(a.slices); err != nil {
		return nil, err
	}
	for i, r := range a.resp.ContainerResponses {
		p.log.Info("allocated", "slices", r.Envs[EnvSliceIDs], "gpus", r.Envs["NVIDIA_VISIBLE_DEVICES"], "container", i)
	}
	return a.resp, nil
}

// checkHealth fails when any slice is on an unhealthy GPU.
func (p *Plugin) checkHealth(containers [][]vgpu.SliceID) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.withheld != "" {
		return status.Errorf(codes.FailedPrecondition, "no slices are offered on this node: enforcement is required and %s", p.withheld)
	}
	for _, slices := range containers {
		for _, s := range slices {
			if h := p.health[s.UUID]; !h.Healthy {
				return status.Errorf(codes.FailedPrecondition, "slice %s is on unhealthy GPU %s (%s)", s, s.UUID, describeHealth(h))
			}
		}
	}
	return nil
}

// besideDRA checks that no slice is on a GPU DRA claims hold and records
// the GPUs handed out, under the node's front-end lock: a claim prepared
// at the same moment either sees this grant or is seen by it.
func (p *Plugin) besideDRA(containers [][]vgpu.SliceID) error {
	if p.opts.FrontEnds == nil {
		return p.checkDRA(containers)
	}
	release, err := p.opts.FrontEnds.Hold()
	if err != nil {
		return status.Errorf(codes.Unavailable, "the node's front-end lock: %v", err)
	}
	defer release()
	if err := p.checkDRA(containers); err != nil {
		return err
	}
	var uuids []string
	for _, slices := range containers {
		for _, s := range slices {
			uuids = append(uuids, s.UUID)
		}
	}
	if err := p.opts.FrontEnds.Granted(uuids); err != nil {
		return status.Errorf(codes.Unavailable, "record the grant for the DRA driver: %v", err)
	}
	return nil
}

// checkDRA fails when any slice is on a GPU DRA claims hold, or when
// which GPUs they hold cannot be told.
func (p *Plugin) checkDRA(containers [][]vgpu.SliceID) error {
	if p.opts.DRAGPUs == nil {
		return nil
	}
	held, err := p.opts.DRAGPUs()
	if err != nil {
		return status.Errorf(codes.Unavailable, "which GPUs DRA claims hold cannot be told: %v", err)
	}
	for _, slices := range containers {
		for _, s := range slices {
			if held[s.UUID] {
				return status.Errorf(codes.FailedPrecondition, "slice %s is on GPU %s, which serves DRA claims (gpu.gpuslice.io); it takes nvidia.com/vgpu pods once they end", s, s.UUID)
			}
		}
	}
	return nil
}

// PreStartContainer is not needed: Allocate does all the work.
func (p *Plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// allocate builds one container's response and returns the slices it
// holds.
func (p *Plugin) allocate(ids []string) (*pluginapi.ContainerAllocateResponse, []vgpu.SliceID, error) {
	if len(ids) == 0 {
		return nil, nil, status.Error(codes.InvalidArgument, "container request has no device IDs")
	}
	limits, err := p.layout.Limits(ids)
	if err != nil {
		return nil, nil, grpcError(err)
	}
	if p.verify != nil {
		uuids := make([]string, len(limits))
		for i, l := range limits {
			uuids[i] = l.UUID
		}
		if err := p.verify(uuids); err != nil {
			return nil, nil, status.Error(codes.FailedPrecondition, err.Error())
		}
	}
	held := make([]vgpu.SliceID, len(ids))
	for i, id := range ids {
		held[i], _ = vgpu.ParseSliceID(id) // Limits validated every ID.
	}

	sorted := append([]string(nil), ids...)
	sort.Strings(sorted)
	grants := make([]contract.Grant, len(limits))
	for i, l := range limits {
		grants[i] = contract.Grant{UUID: l.UUID, Slices: l.Slices, MemoryBytes: l.MemoryBytes, ComputeRatio: l.ComputeRatio}
	}
	r := &pluginapi.ContainerAllocateResponse{Envs: contract.GrantEnv(grants)}
	r.Envs[EnvSliceIDs] = strings.Join(sorted, ",")
	if p.opts.DeviceSpecs {
		r.Devices = p.deviceSpecs(limits)
	}
	if p.opts.CDI.Enabled {
		for _, l := range limits {
			name := l.UUID
			if p.opts.CDI.NameStrategy == "index" {
				name = strconv.Itoa(l.Index)
			}
			if n, ok := p.cdiNames[l.UUID]; ok {
				name = n // a MIG instance's, never its GPU's
			}
			r.CdiDevices = append(r.CdiDevices, &pluginapi.CDIDevice{Name: p.opts.CDI.Kind + "=" + name})
		}
	}
	if p.opts.MPS.Enabled {
		p.addMPS(r, limits)
	}
	return r, held, nil
}

func (p *Plugin) deviceSpecs(limits []vgpu.GPULimit) []*pluginapi.DeviceSpec {
	specs := make([]*pluginapi.DeviceSpec, 0, len(p.controlSpecs)+len(limits))
	specs = append(specs, p.controlSpecs...)
	for _, l := range limits {
		specs = append(specs, p.gpuSpecs[l.UUID])
		specs = append(specs, p.extraSpecs[l.UUID]...)
	}
	return specs
}

// buildDeviceSpecs makes, once, the device node specs Allocate hands out:
// the control nodes every container gets and one node per GPU. Responses
// share them; gRPC only reads them.
func (p *Plugin) buildDeviceSpecs() {
	for _, n := range []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"} {
		p.controlSpecs = append(p.controlSpecs, p.spec(n))
	}
	p.gpuSpecs = map[string]*pluginapi.DeviceSpec{}
	for uuid, minor := range p.minor {
		p.gpuSpecs[uuid] = p.spec("nvidia" + strconv.Itoa(minor))
	}
}

// spec is the device node /dev/<n>, under the host's DevRoot.
func (p *Plugin) spec(n string) *pluginapi.DeviceSpec {
	return &pluginapi.DeviceSpec{ContainerPath: "/dev/" + n, HostPath: strings.TrimSuffix(p.opts.DevRoot, "/") + "/" + n, Permissions: "rw"}
}

// addMPS sets the MPS client limits. MPS's thread percentage is one number
// per client, so a container spanning GPUs gets its smallest share; memory
// limits are per device ordinal as the container sees them.
func (p *Plugin) addMPS(r *pluginapi.ContainerAllocateResponse, limits []vgpu.GPULimit) {
	pct := 100
	mem := make([]string, len(limits))
	for i, l := range limits {
		pct = min(pct, l.ComputePercent())
		mem[i] = fmt.Sprintf("%d=%dM", i, l.MemoryBytes>>20)
	}
	r.Envs["CUDA_MPS_PIPE_DIRECTORY"] = p.opts.MPS.PipeDirectory
	r.Envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = strconv.Itoa(pct)
	r.Envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = strings.Join(mem, ",")
	r.Mounts = append(r.Mounts, &pluginapi.Mount{ContainerPath: p.opts.MPS.PipeDirectory, HostPath: p.opts.MPS.PipeDirectory})
}

func describeHealth(h nvml.Health) string {
	switch h.Reason {
	case nvml.ReasonXID:
		return fmt.Sprintf("xid %d", h.XID)
	case "":
		return "unhealthy"
	}
	return h.Reason
}

// grpcError maps vgpu errors to gRPC status codes, keeping their text, which
// names the offending ID.
func grpcError(err error) error {
	switch {
	case errors.Is(err, vgpu.ErrInvalidID), errors.Is(err, vgpu.ErrUnknownSlice), errors.Is(err, vgpu.ErrDuplicateSlice):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, vgpu.ErrCannotPlace):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
