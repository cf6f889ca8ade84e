package sampler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// GPUs is what the sampler reads from the GPU backend.
type GPUs interface {
	Sample(uuid string) (nvml.Sample, error)
	Processes(uuid string) ([]nvml.Process, error)
}

// Assignments lists which containers hold which slices (pod-resources).
type Assignments = kubeletstate.Lister

// DeviceState is each GPU's health as the node's one record of it keeps
// it; *gpuhealth.Monitor is one.
type DeviceState interface {
	// Health is the GPU's latest health.
	Health(uuid string) nvml.Health
	// XIDs counts the critical XIDs reported for the GPU, by XID.
	XIDs(uuid string) map[uint64]uint64
}

// Options configure a Sampler.
type Options struct {
	// Interval is how often the node is sampled.
	Interval time.Duration
	// ProcRoot is where the host's /proc is mounted.
	ProcRoot string
	// Namespace is the agent's cgroup namespace, in which the cgroup files
	// under ProcRoot are read; the zero value is the host's.
	Namespace host.Namespace
	// PluginDir is the kubelet's device plugin dir, holding its checkpoint.
	PluginDir string
	// ResourceName is the resource whose slices are attributed.
	ResourceName string
	// Names tells containers' names from the runtime's records; nil
	// attributes by pod alone (a pod with one container holding slices of
	// the GPU).
	Names node.ContainerNames
	// Logger receives failures, at most one line per source per minute.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnSample, if set, is called with each snapshot once it is published,
	// on the sampling goroutine; it must not block.
	OnSample func(*node.Snapshot)
	// CgroupRecheck is how long a process's cgroups are remembered before
	// they are read again (sooner when its PID names a new process).
	CgroupRecheck time.Duration
	// DRA reads, besides pod-resources' claims, the DRA driver's record
	// of prepared claims at PreparedClaims, and takes the node's pod UIDs
	// from Pods (node.DRA); Pods nil names pods by the runtime's
	// records alone.
	DRA            bool
	PreparedClaims string
	Pods           kubeletstate.PodUIDs
	// MIG returns the GPUs as last read, with their MIG layouts (they
	// change at run time); each MIG instance in force on them is read as
	// a device of its own, its processes attributed to the containers
	// holding it. Nil reads no instance.
	MIG func() []nvml.Device
}

// DefaultOptions returns the options the agent uses unless configured.
func DefaultOptions() Options {
	return Options{
		Interval:     time.Second,
		ProcRoot:     contract.ProcRoot,
		PluginDir:    contract.DevicePluginDir,
		ResourceName: contract.ResourceName,
		// A process moved between containers (which needs cgroupfs write
		// access outside its own subtree) is seen within 10 s.
		CgroupRecheck:  10 * time.Second,
		PreparedClaims: contract.DRAPreparedClaims,
	}
}

// Sampler samples the node in the background.
type Sampler struct {
	opts    Options
	devices []nvml.Device
	layout  *vgpu.Layout
	gpus    GPUs
	assign  Assignments
	dev     DeviceState

	latest atomic.Pointer[node.Snapshot]

	mu      sync.Mutex // guards the fields below; one sample at a time
	state   node.State
	cgroups *host.Cgroups
	kubelet *kubeletstate.Reader
	// records and tried are reused sample after sample (Build reads the
	// records and keeps none of them).
	recs      node.Records
	tried     map[string]bool
	errors    map[string]uint64
	loggedAt  map[string]time.Time
	durations node.Histogram
}

// New builds a sampler for the devices and layout the agent serves.
func New(devices []nvml.Device, layout *vgpu.Layout, gpus GPUs, assign Assignments, dev DeviceState, opts Options) (*Sampler, error) {
	if opts.Interval <= 0 {
		return nil, fmt.Errorf("sample interval %s must be positive", opts.Interval)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Sampler{
		opts: opts, devices: devices, layout: layout, gpus: gpus, assign: assign, dev: dev,
		cgroups: host.NewCgroups(opts.Namespace, opts.ProcRoot, opts.CgroupRecheck),
		kubelet: kubeletstate.NewReader(kubeletstate.Options{
			PluginDir: opts.PluginDir, ResourceName: opts.ResourceName, Layout: layout, Assignments: assign,
			DRA: opts.DRA, PreparedClaims: opts.PreparedClaims, Pods: opts.Pods,
		}),
		errors: map[string]uint64{}, loggedAt: map[string]time.Time{},
	}
	s.latest.Store(&node.Snapshot{Errors: map[string]uint64{}})
	return s, nil
}

// Snapshot returns the latest snapshot. It never blocks on a sample.
func (s *Sampler) Snapshot() *node.Snapshot { return s.latest.Load() }

// Ready reports whether at least one sample was taken.
func (s *Sampler) Ready() bool { return !s.latest.Load().Time.IsZero() }

// Run samples every Interval until ctx ends.
func (s *Sampler) Run(ctx context.Context) error {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		s.SampleOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Sampler) fail(source string, err error) {
	s.errors[source]++
	now := s.opts.Now()
	if now.Sub(s.loggedAt[source]) >= time.Minute {
		s.loggedAt[source] = now
		s.opts.Logger.Warn("sample failed", "source", source, "err", err)
	}
}

// SampleOnce takes one sample and publishes it: read the node, build the
// snapshot (node.Build), publish it.
func (s *Sampler) SampleOnce(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := s.opts.Now()
	in := s.read(ctx, start)
	snap, next, problems := node.Build(in, s.state)
	s.state = next
	for _, p := range problems {
		s.fail(p.Source, p.Err)
	}
	snap.Errors = maps.Clone(s.errors)
	snap.Duration = s.opts.Now().Sub(start)
	s.durations.Observe(snap.Duration)
	snap.Durations = s.durations.Clone()
	s.latest.Store(snap)
	if s.opts.OnSample != nil {
		s.opts.OnSample(snap)
	}
}

// read gathers one sample's readings: pod-resources (the last known
// assignments when the kubelet does not answer, so a kubelet restart does
// not make every container's series vanish and reappear), the checkpoint,
// and each GPU's sample, health and processes with their cgroups.
func (s *Sampler) read(ctx context.Context, now time.Time) node.Input {
	st := s.kubelet.Read(ctx)
	for _, p := range st.Problems {
		s.fail(p.Source, p.Err)
	}
	in := node.Input{
		Time: now, MaxGap: 2 * s.opts.Interval, Assignments: st.Assignments, Checkpoint: st.Checkpoint,
		Layout: s.layout, ResourceName: s.opts.ResourceName,
		GPUs: make([]node.GPUReading, 0, len(s.devices)), DRA: st.DRA, Stale: st.Stale,
	}
	for _, d := range s.devices {
		in.GPUs = append(in.GPUs, s.readGPU(d, now))
	}
	if s.opts.MIG != nil {
		for _, inst := range nvml.InstancesInForce(s.opts.MIG()) {
			in.GPUs = append(in.GPUs, s.readInstance(inst, now))
		}
		// A GPU's instances where the GPU would be, in index order.
		slices.SortStableFunc(in.GPUs, func(a, b node.GPUReading) int { return cmp.Compare(a.Device.Index, b.Device.Index) })
	}
	in.Records = s.records(in.GPUs)
	s.cgroups.Sweep()
	return in
}

// records looks up the runtime's record of each container a GPU
// process's cgroups name, so that Build does no I/O.
func (s *Sampler) records(gpus []node.GPUReading) node.Records {
	if s.opts.Names == nil {
		return nil
	}
	if s.recs == nil {
		s.recs, s.tried = node.Records{}, map[string]bool{}
	}
	out, tried := s.recs, s.tried
	clear(out)
	clear(tried)
	for _, r := range gpus {
		for _, p := range r.Processes {
			id := p.Container.ContainerID
			if id == "" || tried[id] {
				continue
			}
			tried[id] = true
			if rc, ok := s.opts.Names.Lookup(id); ok {
				out[id] = rc
			}
		}
	}
	return out
}

// readInstance reads one MIG instance as a device of its own: its GPU's
// identity and health, its own UUID, memory and processes. An XID the
// driver put on the instance alone counts on it.
func (s *Sampler) readInstance(inst nvml.InForce, now time.Time) node.GPUReading {
	d := inst.Parent
	d.UUID, d.MemoryBytes, d.MIG = inst.UUID, inst.MemoryBytes, nvml.MIG{}
	r := s.readGPU(d, now)
	r.Instance = &inst
	r.Health = s.dev.Health(inst.Parent.UUID) // its GPU's health, under its own name
	r.Health.UUID = inst.UUID
	if h := s.dev.Health(inst.UUID); h.Parent != "" && !h.Healthy {
		r.Health = h
	}
	return r
}

// readGPU reads one GPU and places each of its processes in its cgroup.
func (s *Sampler) readGPU(d nvml.Device, now time.Time) node.GPUReading {
	r := node.GPUReading{Device: d, Health: s.dev.Health(d.UUID), XIDs: s.dev.XIDs(d.UUID)}
	if sample, err := s.gpus.Sample(d.UUID); err != nil {
		s.fail(node.SourceNVML, fmt.Errorf("gpu %s: %w", d.UUID, err))
	} else {
		r.Sample, r.SampleOK = sample, true
	}
	ps, err := s.gpus.Processes(d.UUID)
	if err != nil {
		s.fail(node.SourceNVML, fmt.Errorf("gpu %s processes: %w", d.UUID, err))
		return r
	}
	r.ProcessesOK = true
	r.Processes = make([]node.Process, 0, len(ps))
	for _, p := range ps {
		np := node.Process{Process: p}
		c, err := s.cgroups.ForPID(p.PID, now)
		switch {
		case err == nil:
			np.Container = c
		case errors.Is(err, host.ErrConflict):
			np.Conflict = err.Error()
		case errors.Is(err, host.ErrNotContainer), errors.Is(err, fs.ErrNotExist):
			// A host process, or one that exited since NVML listed it.
		default:
			s.fail(node.SourceProc, err)
		}
		r.Processes = append(r.Processes, np)
	}
	return r
}
