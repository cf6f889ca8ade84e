// Package kubeletstub is a kubelet stand-in for device plugin tests and the
// demo. It serves the real device plugin v1beta1 Registration service on
// <dir>/kubelet.sock and, like the kubelet's device manager, dials every
// plugin that registers, streams its devices with ListAndWatch and allocates
// to containers by asking GetPreferredAllocation and then Allocate, never
// handing a device to two containers.
package kubeletstub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Kubelet is a running stand-in.
type Kubelet struct {
	pluginapi.UnimplementedRegistrationServer

	dir string
	srv *grpc.Server

	mu      sync.Mutex
	plugins map[string]*Plugin // by resource name
	// allocated maps resource -> device ID -> "pod/container". It outlives
	// plugin connections and restarts, as the kubelet's checkpoint does.
	allocated map[string]map[string]string
	// responses are Allocate's answers by resource and owner, recorded
	// in the checkpoint as the kubelet records them (AllocResp).
	responses map[[2]string][]byte
	regs      []Registration
	changed   chan struct{}
}

// Registration records one Register call.
type Registration struct {
	// Request is what the plugin sent.
	Request *pluginapi.RegisterRequest
	// At is when it arrived.
	At time.Time
}

// Start removes any sockets left in dir, as the kubelet does at start, and
// serves the Registration service on dir/kubelet.sock.
func Start(dir string) (*Kubelet, error) {
	k := &Kubelet{dir: dir, plugins: map[string]*Plugin{}, allocated: map[string]map[string]string{}, responses: map[[2]string][]byte{}, changed: make(chan struct{})}
	if err := k.start(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Kubelet) start() error { return k.startWith(true) }

// startWith listens on kubelet.sock, first removing every socket in the
// directory when clean is true, as the kubelet does when it starts.
func (k *Kubelet) startWith(clean bool) error {
	socks, _ := filepath.Glob(filepath.Join(k.dir, "*.sock"))
	for _, s := range socks {
		if !clean && filepath.Base(s) != "kubelet.sock" {
			continue
		}
		if err := os.Remove(s); err != nil {
			return fmt.Errorf("clean device plugin dir: %w", err)
		}
	}
	// The kubelet's device manager keeps its checkpoint from its start
	// (it writes it as soon as a plugin lists devices): an empty one
	// until something is allocated.
	k.mu.Lock()
	err := k.writeCheckpointLocked()
	k.mu.Unlock()
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	lis, err := net.Listen("unix", filepath.Join(k.dir, "kubelet.sock"))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	k.srv = grpc.NewServer()
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go func() { _ = k.srv.Serve(lis) }()
	return nil
}

// Stop ends the stand-in and its plugin connections and removes its socket.
func (k *Kubelet) Stop() {
	k.srv.Stop()
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.plugins {
		p.close()
	}
	k.plugins = map[string]*Plugin{}
	_ = os.Remove(filepath.Join(k.dir, "kubelet.sock"))
}

// Restart stops the stand-in and starts it again, as a kubelet restart
// does: plugin connections drop, every socket in the dir is removed and
// kubelet.sock is created anew. Plugins must register again.
func (k *Kubelet) Restart() error {
	k.Stop()
	return k.start()
}

// RestartAfter is Restart as a slow kubelet, or one that keeps plugin
// sockets, looks from the plugin directory: kubelet.sock is gone for gap,
// then a new kubelet listens on it; plugins' sockets are removed only when
// removePlugins is true. On ext4 the new socket often gets the old one's
// inode number.
func (k *Kubelet) RestartAfter(gap time.Duration, removePlugins bool) error {
	k.Stop()
	time.Sleep(gap)
	return k.startWith(removePlugins)
}

// Register implements the Registration service: it checks the request and
// connects to the plugin in the background, as the kubelet does.
func (k *Kubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	if r.Version != pluginapi.Version {
		return nil, fmt.Errorf("unsupported device plugin API version %q", r.Version)
	}
	if r.ResourceName == "" || r.Endpoint == "" {
		return nil, errors.New("resource name and endpoint are required")
	}
	k.mu.Lock()
	// A new registration replaces the resource's endpoint at once.
	if old := k.plugins[r.ResourceName]; old != nil {
		old.close()
		delete(k.plugins, r.ResourceName)
	}
	k.regs = append(k.regs, Registration{Request: r, At: time.Now()})
	k.notifyLocked()
	k.mu.Unlock()
	go k.connect(r)
	return &pluginapi.Empty{}, nil
}

func (k *Kubelet) notifyLocked() {
	close(k.changed)
	k.changed = make(chan struct{})
}

func (k *Kubelet) connect(r *pluginapi.RegisterRequest) {
	conn, err := grpc.NewClient("unix://"+filepath.Join(k.dir, r.Endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Plugin{resource: r.ResourceName, conn: conn, client: pluginapi.NewDevicePluginClient(conn), cancel: cancel, kubelet: k}
	if p.options, err = p.client.GetDevicePluginOptions(ctx, &pluginapi.Empty{}); err != nil {
		p.close()
		return
	}
	stream, err := p.client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		p.close()
		return
	}
	k.mu.Lock()
	if k.allocated[r.ResourceName] == nil {
		k.allocated[r.ResourceName] = map[string]string{}
	}
	p.allocated = k.allocated[r.ResourceName]
	if old := k.plugins[r.ResourceName]; old != nil {
		old.close()
	}
	k.plugins[r.ResourceName] = p
	k.notifyLocked()
	k.mu.Unlock()
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		k.mu.Lock()
		p.devices = resp.Devices
		p.updates++
		k.notifyLocked()
		k.mu.Unlock()
	}
}

// Registrations returns every Register call so far.
func (k *Kubelet) Registrations() []Registration {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]Registration(nil), k.regs...)
}

// RegistrationCountLocked returns how many Register calls arrived; call it
// only inside a WaitFor condition.
func (k *Kubelet) RegistrationCountLocked() int { return len(k.regs) }

// WaitFor blocks until cond, evaluated under the stand-in's lock after
// every change, holds or ctx ends.
func (k *Kubelet) WaitFor(ctx context.Context, cond func(k *Kubelet) bool) error {
	for {
		k.mu.Lock()
		ok, ch := cond(k), k.changed
		k.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// PluginLocked returns the connected plugin for resource; call it only
// inside a WaitFor condition.
func (k *Kubelet) PluginLocked(resource string) *Plugin { return k.plugins[resource] }

// Plugin returns the connected plugin for resource, or nil.
func (k *Kubelet) Plugin(resource string) *Plugin {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.plugins[resource]
}

// WaitPlugin waits until a plugin for resource is connected and has sent
// its first device list.
func (k *Kubelet) WaitPlugin(ctx context.Context, resource string) (*Plugin, error) {
	err := k.WaitFor(ctx, func(k *Kubelet) bool {
		p := k.plugins[resource]
		return p != nil && p.updates > 0
	})
	if err != nil {
		return nil, fmt.Errorf("wait for plugin %s: %w", resource, err)
	}
	return k.Plugin(resource), nil
}

// Plugin is the stand-in's connection to one registered plugin.
type Plugin struct {
	resource string
	conn     *grpc.ClientConn
	client   pluginapi.DevicePluginClient
	cancel   context.CancelFunc
	kubelet  *Kubelet
	options  *pluginapi.DevicePluginOptions

	// Guarded by kubelet.mu.
	devices   []*pluginapi.Device
	updates   int
	allocated map[string]string // the kubelet's map for this resource
}

func (p *Plugin) close() {
	p.cancel()
	_ = p.conn.Close()
}

// Client returns the gRPC client for direct calls.
func (p *Plugin) Client() pluginapi.DevicePluginClient { return p.client }

// Options returns what GetDevicePluginOptions answered.
func (p *Plugin) Options() *pluginapi.DevicePluginOptions { return p.options }

// Devices returns the latest device list, sorted by ID.
func (p *Plugin) Devices() []*pluginapi.Device {
	p.kubelet.mu.Lock()
	defer p.kubelet.mu.Unlock()
	return p.devicesLocked()
}

// DevicesLocked is Devices for use inside a WaitFor condition.
func (p *Plugin) DevicesLocked() []*pluginapi.Device { return p.devicesLocked() }

func (p *Plugin) devicesLocked() []*pluginapi.Device {
	out := append([]*pluginapi.Device(nil), p.devices...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Allocation is what one container got.
type Allocation struct {
	// DeviceIDs are the devices the container holds, in the kubelet's order.
	DeviceIDs []string
	// Preferred is what GetPreferredAllocation suggested, if it was asked.
	Preferred []string
	// Response is the plugin's Allocate answer for the container.
	Response *pluginapi.ContainerAllocateResponse
}

// ErrInsufficient is the stand-in's admission error when too few healthy,
// free devices remain, the kubelet's UnexpectedAdmissionError.
var ErrInsufficient = errors.New("insufficient devices")

// Allocate admits one container asking for n devices as the kubelet's
// device manager does: it takes the healthy devices no other container
// holds, asks the plugin for a preferred allocation, uses it when it is a
// valid choice (its own pick, the first n by ID, otherwise), calls Allocate
// and records the devices as held by pod/container.
func (p *Plugin) Allocate(ctx context.Context, pod, container string, n int) (Allocation, error) {
	owner := pod + "/" + container
	p.kubelet.mu.Lock()
	var available []string
	for _, d := range p.devicesLocked() {
		if d.Health == pluginapi.Healthy && p.allocated[d.ID] == "" {
			available = append(available, d.ID)
		}
	}
	if len(available) < n {
		p.kubelet.mu.Unlock()
		return Allocation{}, fmt.Errorf("%w: %s asks for %d %s, %d free", ErrInsufficient, owner, n, p.resource, len(available))
	}
	// Reserve before calling out, as the kubelet does, so concurrent
	// admissions cannot pick the same devices.
	var a Allocation
	var resp *pluginapi.AllocateResponse
	chosen := available[:n]
	if p.options.GetGetPreferredAllocationAvailable() {
		p.kubelet.mu.Unlock()
		pref, err := p.client.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
			AvailableDeviceIDs: available, AllocationSize: int32(n),
		}}})
		if err != nil {
			return Allocation{}, fmt.Errorf("GetPreferredAllocation for %s: %w", owner, err)
		}
		a.Preferred = pref.ContainerResponses[0].DeviceIDs
		p.kubelet.mu.Lock()
		if validChoice(a.Preferred, available, n) && p.freeLocked(a.Preferred) {
			chosen = a.Preferred
		} else if !p.freeLocked(chosen) {
			p.kubelet.mu.Unlock()
			return Allocation{}, fmt.Errorf("%w: devices for %s were taken meanwhile", ErrInsufficient, owner)
		}
	}
	for _, id := range chosen {
		p.allocated[id] = owner
	}
	err := p.kubelet.writeCheckpointLocked()
	p.kubelet.mu.Unlock()
	if err != nil {
		return Allocation{}, fmt.Errorf("write checkpoint: %w", err)
	}
	a.DeviceIDs = append([]string(nil), chosen...)

	resp, err = p.client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: a.DeviceIDs}}})
	if err != nil {
		p.Release(pod, container)
		return Allocation{}, fmt.Errorf("allocate for %s: %w", owner, err)
	}
	a.Response = resp.ContainerResponses[0]
	// The kubelet checkpoints the answer with the devices, so that what
	// Allocate gave survives its restarts (and the agent reads it back).
	recorded, err := proto.Marshal(a.Response)
	if err != nil {
		return Allocation{}, fmt.Errorf("record the answer for %s: %w", owner, err)
	}
	p.kubelet.mu.Lock()
	p.kubelet.responses[[2]string{p.resource, owner}] = recorded
	err = p.kubelet.writeCheckpointLocked()
	p.kubelet.mu.Unlock()
	if err != nil {
		return Allocation{}, fmt.Errorf("write checkpoint: %w", err)
	}
	return a, nil
}

func validChoice(pref, available []string, n int) bool {
	if len(pref) != n {
		return false
	}
	avail := map[string]bool{}
	for _, a := range available {
		avail[a] = true
	}
	seen := map[string]bool{}
	for _, id := range pref {
		if !avail[id] || seen[id] {
			return false
		}
		seen[id] = true
	}
	return true
}

func (p *Plugin) freeLocked(ids []string) bool {
	for _, id := range ids {
		if p.allocated[id] != "" {
			return false
		}
	}
	return true
}

// Release frees what pod/container holds.
func (p *Plugin) Release(pod, container string) {
	owner := pod + "/" + container
	p.kubelet.mu.Lock()
	defer p.kubelet.mu.Unlock()
	for id, o := range p.allocated {
		if o == owner {
			delete(p.allocated, id)
		}
	}
	delete(p.kubelet.responses, [2]string{p.resource, owner})
	_ = p.kubelet.writeCheckpointLocked() // best effort, as for the kubelet's own garbage collection
}

// Holders returns which container holds each allocated device ID.
func (p *Plugin) Holders() map[string]string {
	p.kubelet.mu.Lock()
	defer p.kubelet.mu.Unlock()
	out := make(map[string]string, len(p.allocated))
	for id, o := range p.allocated {
		out[id] = o
	}
	return out
}

// CountHealth returns how many of devs have the given health
// (pluginapi.Healthy or pluginapi.Unhealthy).
func CountHealth(devs []*pluginapi.Device, health string) int {
	n := 0
	for _, d := range devs {
		if d.Health == health {
			n++
		}
	}
	return n
}

// WaitHealthy blocks until the plugin offers exactly n healthy devices or
// ctx ends.
func (p *Plugin) WaitHealthy(ctx context.Context, n int) error {
	return p.kubelet.WaitFor(ctx, func(*Kubelet) bool {
		c := 0
		for _, d := range p.devicesLocked() {
			if d.Health == pluginapi.Healthy {
				c++
			}
		}
		return c == n
	})
}
