package enforce

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/fsnotify/fsnotify"

	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// HoldingsFunc returns what the containers of a pod hold, the pod named as
// the runtime's record names it (kubeletstate.Pods.Holdings).
type HoldingsFunc func(ctx context.Context, pod events.Pod) ([]node.Holding, error)

// DriverOptions configure DriverLimits.
type DriverOptions struct {
	// Limiter is the driver.
	Limiter nvml.MemoryLimiter
	// CgroupRoot is where the cgroup filesystems are mounted; the v2
	// hierarchy is CgroupRoot itself or CgroupRoot/unified.
	CgroupRoot string
	// Holdings says what a new container's pod holds.
	Holdings HoldingsFunc
	// Names tells a new container's name from the runtime's record; nil
	// leaves every new container's limits to the per-sample pass.
	Names node.ContainerNames
	// Events records an Event on the pod when a limit cannot be set.
	Events events.Recorder
	// Logger receives actions and failures.
	Logger *slog.Logger
}

// DriverStats counts what DriverLimits did.
type DriverStats struct {
	// Set counts limits set; Cleared limits cleared before the cgroup went
	// away; Failed NVML calls that failed.
	Set, Cleared, Failed uint64
	// Uncleared counts cgroups removed while their soft limit was still
	// set (the agent was too slow or not running): on a dmem driver their
	// reservation stays charged to the cgroup's ancestors.
	Uncleared uint64
}

// DriverLimits is the strongest memory tier: the driver's own per-cgroup
// GPU memory limits (r615+, cgroup v2). Each container's leaf cgroup gets
// soft = hard = the memory its slices carry on each GPU, set the moment
// the runtime creates the cgroup (fsnotify), so an allocation past the
// limit fails inside the container with out-of-memory. When the cgroup
// empties, its soft limit is zeroed before the runtime removes it, so no
// reservation is left behind in its ancestors.
type DriverLimits struct {
	opts DriverOptions
	root string // the cgroup v2 mount
	log  *slog.Logger

	mu      sync.Mutex
	watch   *fsnotify.Watcher            // while Run runs
	applied map[string]map[string]uint64 // cgroup dir -> GPU -> limit
	owner   map[string]string            // cgroup dir -> container ID
	stats   DriverStats
}

// ErrDriverTierOff reports a driver tier not asked for: turned off, or a
// memory policy that does not kill (log and off only watch or do nothing).
var ErrDriverTierOff = errors.New("driver GPU memory limits are off (they need --driver-memory-limits and --memory-policy=kill)")

// NewDriverTier returns the driver memory-limit tier where the enforcement
// options ask for it and the driver and host have it; otherwise an error
// saying why not (ErrDriverTierOff when not asked for), and the watchdog
// alone holds memory.
func NewDriverTier(o Options, d DriverOptions) (*DriverLimits, error) {
	if !o.DriverMemoryLimits || o.Memory != MemoryKill {
		return nil, ErrDriverTierOff
	}
	return NewDriverLimits(d)
}

// NewDriverLimits checks that the driver sets per-cgroup memory limits on
// this host and returns the tier, or an error saying why it cannot be
// used (then the watchdog alone holds memory).
func NewDriverLimits(opts DriverOptions) (*DriverLimits, error) {
	if opts.Limiter == nil || opts.Holdings == nil {
		return nil, errors.New("driver limits need a limiter and grants")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Events == nil {
		opts.Events = events.Discard{}
	}
	root, err := host.CgroupV2Root(opts.CgroupRoot)
	if err != nil {
		return nil, err
	}
	if err := opts.Limiter.MemoryLimitsSupported(root); err != nil {
		return nil, err
	}
	return &DriverLimits{opts: opts, root: root, log: opts.Logger, applied: map[string]map[string]uint64{}, owner: map[string]string{}}, nil
}

// Root is the cgroup v2 mount the tier watches.
func (d *DriverLimits) Root() string { return d.root }

// Run watches the kubepods part of the cgroup v2 hierarchy until ctx ends:
// new container cgroups get their limits at once, emptied ones have them
// cleared.
func (d *DriverLimits) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch cgroups: %w", err)
	}
	defer func() { _ = w.Close() }()
	if err := w.Add(d.root); err != nil {
		return fmt.Errorf("watch cgroups: %w", err)
	}
	d.mu.Lock()
	d.watch = w
	for dir := range d.applied {
		d.watchEventsLocked(dir)
	}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.watch = nil
		d.mu.Unlock()
	}()
	d.addTree(w, d.root)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// An overflowed queue loses creations; the per-sample pass
			// catches up on those containers.
			d.log.Warn("cgroup watch", "err", err)
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			d.handle(w, ev)
		}
	}
}

// watched reports whether a cgroup directory can hold pods' containers:
// the kubepods subtree, and the top level, where kubepods is created (or,
// under kind and similar, a prefix holding it).
func (d *DriverLimits) watched(dir string) bool {
	rel, err := filepath.Rel(d.root, dir)
	return err == nil && !strings.HasPrefix(rel, "..") && (!strings.Contains(rel, "/") || strings.Contains(rel, "kubepods"))
}

// addTree watches dir's kubepods subtree and limits the containers found
// in it: cgroups created before the watch was in place.
func (d *DriverLimits) addTree(w *fsnotify.Watcher, dir string) {
	_ = filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return nil //nolint:nilerr // a cgroup removed while walking
		}
		if path != dir && !d.watched(path) {
			return fs.SkipDir // system.slice, user.slice...
		}
		if path != d.root {
			if err := w.Add(path); err != nil {
				d.log.Debug("watch cgroup", "cgroup", path, "err", err)
			}
			d.created(path)
		}
		return nil
	})
}

func (d *DriverLimits) handle(w *fsnotify.Watcher, ev fsnotify.Event) {
	switch {
	case ev.Has(fsnotify.Create):
		if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() && d.watched(ev.Name) {
			d.addTree(w, ev.Name)
		}
	case ev.Has(fsnotify.Write) && filepath.Base(ev.Name) == "cgroup.events":
		dir := filepath.Dir(ev.Name)
		if d.isApplied(dir) && !populated(ev.Name) {
			d.clear(dir, "emptied")
		}
	case ev.Has(fsnotify.Remove):
		d.mu.Lock()
		if gpus, ok := d.applied[ev.Name]; ok {
			d.stats.Uncleared++
			d.log.Warn("container cgroup removed before its GPU memory soft limit was cleared", "cgroup", ev.Name, "gpus", len(gpus))
			delete(d.applied, ev.Name)
			delete(d.owner, ev.Name)
		}
		d.mu.Unlock()
	}
}

// populated reads a cgroup.events file; a file that cannot be read counts
// as populated, so nothing is cleared on a doubt.
func populated(events string) bool {
	data, err := os.ReadFile(events) //nolint:gosec // a cgroup file under the operator's --cgroup-root
	if err != nil {
		return true
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return strings.TrimSpace(v) != "0"
		}
	}
	return true
}

func (d *DriverLimits) isApplied(dir string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.applied[dir]
	return ok
}

// created limits a new cgroup at once when it is a container that holds
// slices: the runtime's record names the container, and the kubelet's
// checkpoint says what that container holds. The pod's sandbox (pause)
// and containers holding no slices (init containers, sidecars) get no
// limit: a limit is a reservation on a dmem driver. Without the runtime's
// record nothing is set here; the per-sample pass limits the container once
// its processes use the GPU.
func (d *DriverLimits) created(dir string) {
	rel, _ := filepath.Rel(d.root, dir)
	c, ok := host.ParseCgroupPath("/" + rel)
	if !ok || c.PodUID == "" || c.ContainerID == "" || c.Outside || c.Paths[""] != "/"+rel || d.opts.Names == nil {
		return
	}
	rc, ok := d.opts.Names.Lookup(c.ContainerID)
	if !ok || rc.Sandbox || (rc.PodUID != "" && rc.PodUID != c.PodUID) || (rc.CgroupsPath != "" && !node.RecordedAt(c, rc.CgroupsPath)) {
		return
	}
	pod := events.Pod{Namespace: rc.PodNamespace, Name: rc.PodName, UID: c.PodUID}
	held, err := d.opts.Holdings(context.Background(), pod)
	if err != nil {
		d.log.Warn("cannot tell what a new container holds; its limits wait for the next sample", "cgroup", dir, "err", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range held {
		// A MIG instance is held by the hardware; the driver's limits do
		// not support MIG.
		if h.Container == rc.Name && !nvml.IsMIGUUID(h.UUID) {
			d.setLocked(dir, c.ContainerID, h.UUID, h.MemoryBytes, pod, h.Container)
		}
	}
}

// setLocked sets one cgroup's limit on one GPU unless it is set already.
func (d *DriverLimits) setLocked(dir, containerID, uuid string, bytes uint64, pod events.Pod, container string) {
	if cur, ok := d.applied[dir][uuid]; ok && cur == bytes {
		return
	}
	if err := d.opts.Limiter.SetMemoryLimits(uuid, dir, bytes, bytes); err != nil {
		d.stats.Failed++
		if errors.Is(err, fs.ErrNotExist) {
			return // the container is gone already
		}
		d.log.Error("set driver GPU memory limit", "cgroup", dir, "gpu", uuid, "container", container, "err", err)
		if pod.Name != "" {
			d.opts.Events.Warning(pod, "GPUMemoryLimitFailed",
				fmt.Sprintf("The driver refused a GPU memory limit of %d MiB on GPU %s for container %s: %v; the memory watchdog holds it instead.", bytes>>20, uuid, container, err))
		}
		return
	}
	if d.applied[dir] == nil {
		d.applied[dir] = map[string]uint64{}
		d.watchEventsLocked(dir)
	}
	d.applied[dir][uuid] = bytes
	d.owner[dir] = containerID
	d.stats.Set++
	d.log.Info("driver GPU memory limit set", "cgroup", dir, "gpu", uuid, "container", container, "limit_bytes", bytes)
}

// watchEventsLocked watches a limited cgroup's cgroup.events file. The
// kernel reports its changes only to watches that hold the file's inode:
// a watch on the directory alone misses them below the top level.
func (d *DriverLimits) watchEventsLocked(dir string) {
	if d.watch == nil {
		return
	}
	if err := d.watch.Add(filepath.Join(dir, "cgroup.events")); err != nil {
		d.log.Debug("watch cgroup.events", "cgroup", dir, "err", err)
	}
}

// clear zeroes a cgroup's soft limit and lifts its hard one on every GPU.
func (d *DriverLimits) clear(dir, why string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for uuid := range d.applied[dir] {
		err := d.opts.Limiter.SetMemoryLimits(uuid, dir, 0, nvml.NoMemoryLimit)
		switch {
		case err == nil:
			d.stats.Cleared++
		case errors.Is(err, fs.ErrNotExist):
			d.stats.Uncleared++
		default:
			d.stats.Failed++
			d.log.Error("clear driver GPU memory limit", "cgroup", dir, "gpu", uuid, "err", err)
		}
	}
	d.log.Debug("driver GPU memory limits cleared", "cgroup", dir, "why", why)
	delete(d.applied, dir)
	delete(d.owner, dir)
}

// Apply makes sure every container seen in a sample has its limits: those
// whose cgroup appeared before the agent, or whose pod has several
// containers holding slices.
func (d *DriverLimits) Apply(snap *node.Snapshot) { d.Act(PlanDriverLimits(snap, d.root)) }

// Act sets the planned limits (those already in force are left as they
// are) and forgets cgroups removed while the watch missed it.
func (d *DriverLimits) Act(plan []DriverLimit) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range plan {
		d.setLocked(l.Dir, l.ContainerID, l.UUID, l.Bytes, l.Pod, l.Container)
	}
	for dir := range d.applied {
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			d.stats.Uncleared++
			delete(d.applied, dir)
			delete(d.owner, dir)
		}
	}
}

// DriverLimit is one limit the driver tier holds a container to on one
// GPU: its cgroup v2 directory under the tier's root.
type DriverLimit struct {
	Dir, ContainerID, UUID string
	Bytes                  uint64
	Pod                    events.Pod
	Container              string
}

// PlanDriverLimits is the limits a snapshot asks of the driver tier under
// root: one per container and GPU it holds by its own cgroup. A pod-level
// cgroup holds other containers too (the watchdog holds such a container
// instead), and a container without a cgroup v2 path or a limit gets
// none. Nothing is done while deciding.
func PlanDriverLimits(snap *node.Snapshot, root string) []DriverLimit {
	var out []DriverLimit
	for _, c := range snap.Containers {
		p, ok := c.Cgroup.Paths[""]
		if !ok || c.MemoryLimitBytes == 0 || c.Cgroup.PodLevel() || nvml.IsMIGUUID(c.UUID) {
			continue
		}
		out = append(out, DriverLimit{Dir: filepath.Join(root, p), ContainerID: c.Cgroup.ContainerID, UUID: c.UUID, Bytes: c.MemoryLimitBytes,
			Pod: events.Pod{Namespace: c.Namespace, Name: c.Pod, UID: c.PodUID}, Container: c.Container})
	}
	return out
}

// Limits returns the limits in force by container ID and GPU UUID.
func (d *DriverLimits) Limits() map[string]map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]map[string]uint64{}
	for dir, gpus := range d.applied {
		id := d.owner[dir]
		if out[id] == nil {
			out[id] = map[string]uint64{}
		}
		for g, b := range gpus {
			out[id][g] = b
		}
	}
	return out
}

// Stats returns what the tier did.
func (d *DriverLimits) Stats() DriverStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}
