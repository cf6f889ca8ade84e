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

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/gpuslice/gpuslice/pkg/dra"
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
	// RegistrarDir is where the kubelet looks for plugins to register
	// (/var/lib/kubelet/plugins_registry); PluginDir holds the plugin's
	// own socket (/var/lib/kubelet/plugins/gpu.gpuslice.io).
	RegistrarDir, PluginDir string
	// Fatal is called with an error the plugin cannot recover from (the
	// API server refuses the ResourceSlices as built); the caller stops.
	Fatal func(error)
	// Logger receives what the plugin does.
	Logger *slog.Logger
}

// Plugin is a running kubelet plugin.
type Plugin struct {
	helper *kubeletplugin.Helper
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
	d := &driver{prep: o.Preparer, pool: o.NodeName, log: o.Logger, fatal: o.Fatal}
	helper, err := kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(dra.DriverName),
		kubeletplugin.NodeName(o.NodeName),
		kubeletplugin.KubeClient(o.Client),
		kubeletplugin.RegistrarDirectoryPath(o.RegistrarDir),
		kubeletplugin.PluginDataDirectoryPath(o.PluginDir),
	)
	if err != nil {
		return nil, fmt.Errorf("start the kubelet plugin: %w", err)
	}
	var pool resourceslice.Pool
	for _, part := range dra.Slices(o.Devices) {
		pool.Slices = append(pool.Slices, resourceslice.Slice{Devices: part})
	}
	if err := helper.PublishResources(ctx, resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{o.NodeName: pool}}); err != nil {
		helper.Stop()
		return nil, fmt.Errorf("publish the node's GPUs: %w", err)
	}
	return &Plugin{helper: helper}, nil
}

// Stop stops serving the kubelet. The ResourceSlices stay: a restarted
// plugin takes them over, and the node's deletion removes them.
func (p *Plugin) Stop() { p.helper.Stop() }

// driver answers the helper's calls.
type driver struct {
	prep  *dra.Preparer
	pool  string
	log   *slog.Logger
	fatal func(error)
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
	}
	return out, nil
}

// UnprepareResourceClaims unprepares each claim; one never prepared is no
// error.
func (d *driver) UnprepareResourceClaims(_ context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := make(map[types.UID]error, len(claims))
	for _, c := range claims {
		out[c.UID] = d.prep.Unprepare(c.UID)
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

// WatchHealthStatus is not supported yet: GPU health will reach the
// scheduler as device taints.
func (d *driver) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}
