// Package draplugin is gpuslice's kubelet DRA plugin: it answers the
// kubelet's NodePrepareResources and NodeUnprepareResources calls with a
// dra.Preparer and publishes the node's GPUs as ResourceSlices, on
// k8s.io/dynamic-resource-allocation/kubeletplugin.
//
// It links client-go's clientset, whose package initialisation alone
// takes more memory than the whole agent, so it belongs in its own
// binary, never in gpu-agent (docs/dra.md).
package draplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// Options configure a Plugin.
type Options struct {
	// NodeName is this node; its pool is named after it.
	NodeName string
	// Client reaches the API server: the helper reads claims and
	// publishes ResourceSlices with it.
	Client kubernetes.Interface
	// Preparer prepares and unprepares claims.
	Preparer *dra.Preparer
	// Devices are the node's GPUs as DRA devices (dra.Devices).
	Devices []resourceapi.Device
	// Counters are the counter sets Devices consume (dra.WithSliceDevices);
	// each goes in the pool's counter slices.
	Counters []resourceapi.CounterSet
	// RegistrarDir is where the kubelet looks for plugins to register
	// (/var/lib/kubelet/plugins_registry); PluginDir holds the plugin's
	// own socket (/var/lib/kubelet/plugins/gpu.gpuslice.io).
	RegistrarDir, PluginDir string
	// ClaimEnforcement is gpu-agent's file of how each claim's share is
	// held (contract.ClaimEnforcementPath), read into the claims' Enforced
	// condition; empty writes no Enforced condition.
	ClaimEnforcement string
	// Taints is the effect an unhealthy GPU's taint takes, by cause; the
	// zero value is dra.DefaultTaintPolicy.
	Taints dra.TaintPolicy
	// Fatal is called with an error the plugin cannot recover from (the
	// API server refuses the ResourceSlices as built); the caller stops.
	Fatal func(error)
	// Logger receives what the plugin does.
	Logger *slog.Logger
}

// Plugin is a running kubelet plugin.
type Plugin struct {
	helper *kubeletplugin.Helper
	d      *driver
	// stop ends the plugin's own work (the claims' status).
	stop context.CancelFunc
}

// Start registers the plugin with the kubelet (through RegistrarDir) and
// publishes the node's devices in the node's pool.
func Start(ctx context.Context, o Options) (*Plugin, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Fatal == nil {
		o.Fatal = func(error) {}
	}
	if o.Taints.Fatal == "" {
		o.Taints = dra.DefaultTaintPolicy()
	}
	d := &driver{prep: o.Preparer, pool: o.NodeName, log: o.Logger, fatal: o.Fatal, devices: o.Devices, counters: o.Counters, taints: o.Taints,
		status: newStatusWriter(o.Client, o.NodeName, o.Preparer, o.ClaimEnforcement, o.Logger),
		health: map[string]nvml.Health{}, fatalGPU: map[string]bool{}, changed: make(chan struct{})}
	var stop context.CancelFunc
	d.ctx, stop = context.WithCancel(ctx)
	helper, err := kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(dra.DriverName),
		kubeletplugin.NodeName(o.NodeName),
		kubeletplugin.KubeClient(o.Client),
		kubeletplugin.RegistrarDirectoryPath(o.RegistrarDir),
		kubeletplugin.PluginDataDirectoryPath(o.PluginDir),
	)
	if err != nil {
		stop()
		return nil, fmt.Errorf("start the kubelet plugin: %w", err)
	}
	p := &Plugin{helper: helper, d: d, stop: stop}
	go d.status.run(d.ctx)
	if err := p.publish(ctx); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// publish hands the node's devices, tainted by their health, to the
// helper, which keeps the ResourceSlices in the API server as given.
func (p *Plugin) publish(ctx context.Context) error {
	p.d.mu.Lock()
	devices := p.d.taints.Tainted(p.d.devices, p.d.health, p.d.fatalGPU)
	p.d.mu.Unlock()
	var pool resourceslice.Pool
	for _, part := range dra.CounterSlices(p.d.counters) {
		pool.Slices = append(pool.Slices, resourceslice.Slice{SharedCounters: part})
	}
	for _, part := range dra.Slices(devices) {
		pool.Slices = append(pool.Slices, resourceslice.Slice{Devices: part})
	}
	if err := p.helper.PublishResources(ctx, resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{p.d.pool: pool}}); err != nil {
		return fmt.Errorf("publish the node's GPUs: %w", err)
	}
	return nil
}

// SetHealth records a GPU's health: an unhealthy GPU's device is tainted
// (dra.UnhealthyTaintKey) so that new claims avoid it, with the effect its
// cause takes (Options.Taints; once fatal, fatal until the GPU is healthy
// again, whatever XID comes after), a recovered one untainted, and the
// kubelet's health stream told either way. Claims already prepared keep
// the GPU unless a NoExecute taint has their pods evicted.
func (p *Plugin) SetHealth(ctx context.Context, h nvml.Health) error {
	p.d.mu.Lock()
	prev, seen := p.d.health[h.UUID]
	wasFatal := p.d.fatalGPU[h.UUID]
	switch {
	case h.Healthy:
		delete(p.d.fatalGPU, h.UUID)
	case p.d.taints.IsFatal(h):
		p.d.fatalGPU[h.UUID] = true
	}
	fatal := p.d.fatalGPU[h.UUID]
	differs := !seen || prev.Healthy != h.Healthy || prev.XID != h.XID || wasFatal != fatal
	p.d.health[h.UUID] = h
	if differs {
		close(p.d.changed)
		p.d.changed = make(chan struct{})
	}
	effect := p.d.taints.Recoverable
	if fatal {
		effect = p.d.taints.Fatal
	}
	p.d.mu.Unlock()
	if !differs {
		return nil
	}
	if !h.Healthy {
		p.d.log.Warn("gpu unhealthy: its device is tainted", "uuid", h.UUID, "reason", h.Reason, "xid", h.XID, "effect", effect)
	} else if seen {
		p.d.log.Info("gpu healthy again: taint removed", "uuid", h.UUID)
	}
	return p.publish(ctx)
}

// Stop unregisters the plugin and stops serving. The ResourceSlices stay:
// a restarted plugin takes them over.
func (p *Plugin) Stop() {
	p.stop()
	p.helper.Stop()
}

type driver struct {
	prep     *dra.Preparer
	pool     string
	log      *slog.Logger
	fatal    func(error)
	devices  []resourceapi.Device
	counters []resourceapi.CounterSet
	taints   dra.TaintPolicy
	status   *statusWriter
	// ctx is the plugin's lifetime, for work that outlives a call.
	ctx context.Context

	mu sync.Mutex
	// fatalGPU are the GPUs (by UUID) whose taint is fatal: lost, or a
	// fatal XID since they were last healthy.
	fatalGPU map[string]bool
	// health is each GPU's latest, by UUID; changed is closed and
	// replaced whenever one changes.
	health  map[string]nvml.Health
	changed chan struct{}
}

// PrepareResourceClaims prepares each claim on its own: one that fails
// (a GPU it would overcommit, a device the node does not have) is
// reported on that claim and leaves the others prepared.
func (d *driver) PrepareResourceClaims(_ context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, c := range claims {
		id, err := d.prep.Prepare(c)
		if err != nil {
			d.log.Warn("claim not prepared", "namespace", c.Namespace, "claim", c.Name, "err", err)
			out[c.UID] = kubeletplugin.PrepareResult{Err: err}
			continue
		}
		var devices []kubeletplugin.Device
		for _, r := range c.Status.Allocation.Devices.Results {
			if r.Driver == dra.DriverName && r.Pool == d.pool {
				devices = append(devices, kubeletplugin.Device{Requests: []string{r.Request}, PoolName: r.Pool, DeviceName: r.Device, CDIDeviceIDs: []string{id}, ShareID: r.ShareID})
			}
		}
		d.log.Info("claim prepared", "namespace", c.Namespace, "claim", c.Name, "cdi", id)
		out[c.UID] = kubeletplugin.PrepareResult{Devices: devices}
		if prepared, ok := d.prep.Claim(c.UID); ok {
			d.status.prepared(d.ctx, c, prepared.Grants)
		}
	}
	return out, nil
}

// UnprepareResourceClaims unprepares each claim; one never prepared is no
// error.
func (d *driver) UnprepareResourceClaims(_ context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := make(map[types.UID]error, len(claims))
	for _, c := range claims {
		out[c.UID] = d.prep.Unprepare(c.UID)
		if out[c.UID] == nil {
			d.status.unprepared(c.UID)
		}
		d.log.Info("claim unprepared", "namespace", c.Namespace, "claim", c.Name, "err", out[c.UID])
	}
	return out, nil
}

// HandleError logs background errors; one that retrying cannot fix (the
// API server refusing the slices as built) is fatal.
func (d *driver) HandleError(_ context.Context, err error, msg string) {
	d.log.Error("kubelet plugin background error", "what", msg, "err", err)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) {
		d.fatal(fmt.Errorf("%s: %w", msg, err))
	}
}

// healthResend is how often the health of every device is sent again:
// the kubelet takes a device's health for unknown after 30 s without one.
const healthResend = 10 * time.Second

// WatchHealthStatus streams each GPU's health to the kubelet, which shows
// it in the status of pods using the GPU: all devices at once, again on
// every change and every healthResend.
func (d *driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	t := time.NewTicker(healthResend)
	defer t.Stop()
	for {
		r, changed := d.healthReport()
		select {
		case <-ctx.Done():
			return nil
		case reports <- r:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-t.C:
		}
	}
}

// healthReport is every device's health now, and the channel closed at the
// next change.
func (d *driver) healthReport() (kubeletplugin.DeviceHealthReport, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	r := kubeletplugin.DeviceHealthReport{Devices: make([]kubeletplugin.DeviceHealth, 0, len(d.devices))}
	for _, dev := range d.devices {
		h := kubeletplugin.DeviceHealth{PoolName: d.pool, DeviceName: dev.Name, Health: kubeletplugin.HealthStatusUnknown, LastUpdated: now}
		if g, _, ok := dra.DeviceHealth(dev, d.health); ok && g.Healthy {
			h.Health = kubeletplugin.HealthStatusHealthy
		} else if ok {
			h.Health, h.Message = kubeletplugin.HealthStatusUnhealthy, dra.TaintValue(g)
		}
		r.Devices = append(r.Devices, h)
	}
	return r, d.changed
}
