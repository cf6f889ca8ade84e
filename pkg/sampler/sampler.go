package sampler

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpuslice/gpuslice/pkg/attribution"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// GPUs is what the sampler reads from the GPU backend.
type GPUs interface {
	Sample(uuid string) (nvml.Sample, error)
	Processes(uuid string) ([]nvml.Process, error)
}

// Assignments lists which containers hold which slices.
type Assignments interface {
	List(ctx context.Context) ([]podresources.Assignment, error)
}

// DeviceState is the device plugin's view of each GPU.
type DeviceState interface {
	// Health is the GPU's latest health.
	Health(uuid string) nvml.Health
	// XIDs counts the critical XIDs reported for the GPU, by XID.
	XIDs(uuid string) map[uint64]uint64
}

// DurationBuckets are the upper bounds, in seconds, of the sample duration
// histogram.
var DurationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// Histogram is a cumulative histogram of sample durations.
type Histogram struct {
	// Counts[i] is the number of samples no longer than DurationBuckets[i].
	Counts []uint64
	Count  uint64
	Sum    float64
}

// Error sources counted in Snapshot.Errors.
const (
	SourceNVML         = "nvml"
	SourcePodResources = "podresources"
	SourceCheckpoint   = "checkpoint"
	SourceProc         = "proc"
)

// Options configure a Sampler.
type Options struct {
	// Interval is how often the node is sampled.
	Interval time.Duration
	// ProcRoot is where the host's /proc is mounted.
	ProcRoot string
	// PluginDir is the kubelet's device plugin dir, holding its checkpoint.
	PluginDir string
	// ResourceName is the resource whose slices are attributed.
	ResourceName string
	// Names tells containers' names from the runtime's records; nil
	// attributes by pod alone (a pod with one container holding slices of
	// the GPU).
	Names attribution.ContainerNames
	// Logger receives failures, at most one line per source per minute.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnSample, if set, is called with each snapshot once it is published,
	// on the sampling goroutine; it must not block.
	OnSample func(*Snapshot)
}

// DefaultOptions returns the options the agent uses unless configured.
func DefaultOptions() Options {
	return Options{
		Interval:     time.Second,
		ProcRoot:     contract.ProcRoot,
		PluginDir:    contract.DevicePluginDir,
		ResourceName: contract.ResourceName,
	}
}

// Device is one GPU in a snapshot.
type Device struct {
	nvml.Device
	// Sample is the GPU's state; valid only when SampleOK.
	Sample   nvml.Sample
	SampleOK bool
	// ProcessesOK is false when the GPU's processes could not be listed:
	// then no container's use of the GPU is known.
	ProcessesOK bool
	// Health is the device plugin's view.
	Health nvml.Health
	// XIDs counts critical XIDs by XID since the agent started.
	XIDs map[uint64]uint64
	// Slices is how many slices the GPU is cut into; Allocated, how many
	// of them containers hold.
	Slices    int
	Allocated int
}

// Container is one container's use of one GPU in a snapshot.
type Container struct {
	Namespace string
	Pod       string
	Container string
	// PodUID is the pod's UID when known.
	PodUID string
	// GPU is the GPU's UUID; Index its index.
	GPU   string
	Index int
	// Slices held on this GPU and the limits they carry.
	Slices            int
	MemoryLimitBytes  uint64
	ComputeLimitRatio float64
	// MemoryUsedBytes and SMUtilization are summed over the container's
	// processes on this GPU.
	MemoryUsedBytes uint64
	SMUtilization   float64
	// BusySeconds is the GPU time the container has used since the agent
	// started: SM utilization integrated over time.
	BusySeconds float64
	// LastActive is the last sample at which the container used the GPU;
	// zero if never.
	LastActive time.Time
	// Processes is how many of its processes use the GPU.
	Processes int
	// Procs are those processes, with their memory and SM utilization.
	Procs []nvml.Process
	// Cgroup is the cgroup that holds the container's GPU processes, from
	// those processes: the container's own, or its pod's when one of them
	// runs in the pod's cgroup; zero when none of them was seen.
	Cgroup attribution.Container
	// Blind is true when the GPU's processes could not be listed in this
	// sample: the use fields above are unknown, not zero, and Cgroup is
	// the last one seen.
	Blind bool
}

// Blind reports whether the device's use by containers is unknown in this
// sample: its readings or its process list failed.
func (d Device) Blind() bool { return !d.SampleOK || !d.ProcessesOK }

// Snapshot is the node's state at one sample. It is never modified once
// published.
type Snapshot struct {
	Time         time.Time
	Duration     time.Duration
	Devices      []Device
	Containers   []Container
	Unattributed []attribution.Unattributed
	// Unauthorized are processes in pods using GPUs their containers hold
	// no slices of.
	Unauthorized []attribution.Unauthorized
	// Errors counts failures by source since the agent started.
	Errors map[string]uint64
	// Durations is how long samples took, up to the previous one.
	Durations Histogram
}

type containerKey struct{ ns, pod, ctr, gpu string }

type accum struct {
	busy       float64
	lastActive time.Time
	cgroup     attribution.Container // the last seen, kept while blind
}

// Sampler samples the node in the background.
type Sampler struct {
	opts    Options
	devices []nvml.Device
	layout  *vgpu.Layout
	gpus    GPUs
	assign  Assignments
	state   DeviceState

	latest atomic.Pointer[Snapshot]

	mu          sync.Mutex // guards the fields below; one sample at a time
	last        time.Time
	assignments []podresources.Assignment
	accums      map[containerKey]*accum
	errors      map[string]uint64
	loggedAt    map[string]time.Time
	durations   Histogram
}

// New builds a sampler for the devices and layout the agent serves.
func New(devices []nvml.Device, layout *vgpu.Layout, gpus GPUs, assign Assignments, state DeviceState, opts Options) (*Sampler, error) {
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
		opts: opts, devices: devices, layout: layout, gpus: gpus, assign: assign, state: state,
		accums: map[containerKey]*accum{}, errors: map[string]uint64{}, loggedAt: map[string]time.Time{},
		durations: Histogram{Counts: make([]uint64, len(DurationBuckets))},
	}
	s.latest.Store(&Snapshot{Errors: map[string]uint64{}})
	return s, nil
}

// Snapshot returns the latest snapshot. It never blocks on a sample.
func (s *Sampler) Snapshot() *Snapshot { return s.latest.Load() }

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

// SampleOnce takes one sample and publishes it.
func (s *Sampler) SampleOnce(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := s.opts.Now()
	// Integrate over the time since the last sample, but never more than
	// two intervals: a stalled agent must not credit a long gap to
	// whatever ran at its end.
	dt := min(start.Sub(s.last), 2*s.opts.Interval)
	if s.last.IsZero() {
		dt = 0
	}
	s.last = start

	if a, err := s.assign.List(ctx); err != nil {
		// Keep the last known assignments: a kubelet restart must not make
		// every container's series vanish and reappear.
		s.fail(SourcePodResources, err)
	} else {
		s.assignments = a
	}
	checkpoint, err := attribution.ReadCheckpoint(s.opts.PluginDir)
	if err != nil {
		s.fail(SourceCheckpoint, err)
		checkpoint = nil
	}

	snap := &Snapshot{Time: start, Errors: map[string]uint64{}}
	var procs []attribution.GPUProcess
	var unauthorized []attribution.Unauthorized
	type gpuPID struct {
		gpu string
		pid int
	}
	usage := map[gpuPID]nvml.Process{}
	for _, d := range s.devices {
		dev := Device{Device: d, Health: s.state.Health(d.UUID), XIDs: s.state.XIDs(d.UUID)}
		if g, ok := s.layout.GPU(d.UUID); ok {
			dev.Slices = g.Slices
		}
		if sample, err := s.gpus.Sample(d.UUID); err != nil {
			s.fail(SourceNVML, fmt.Errorf("gpu %s: %w", d.UUID, err))
		} else {
			dev.Sample, dev.SampleOK = sample, true
		}
		ps, err := s.gpus.Processes(d.UUID)
		if err != nil {
			s.fail(SourceNVML, fmt.Errorf("gpu %s processes: %w", d.UUID, err))
		} else {
			dev.ProcessesOK = true
		}
		for _, p := range ps {
			gp := attribution.GPUProcess{PID: p.PID, GPU: d.UUID}
			c, err := attribution.ForPID(s.opts.ProcRoot, p.PID)
			switch {
			case err == nil:
				gp.Container = c
			case errors.Is(err, attribution.ErrConflict):
				// Placed in two containers at once: only a process that
				// writes cgroupfs outside its own subtree can do that.
				unauthorized = append(unauthorized, attribution.Unauthorized{GPUProcess: gp, Reason: err.Error()})
				continue
			case errors.Is(err, attribution.ErrNotContainer), errors.Is(err, fs.ErrNotExist):
				// A host process, or one that exited since NVML listed it.
			default:
				s.fail(SourceProc, err)
			}
			procs = append(procs, gp)
			usage[gpuPID{d.UUID, p.PID}] = p
		}
		snap.Devices = append(snap.Devices, dev)
	}

	joined := attribution.Join(procs, s.assignments, checkpoint, s.opts.ResourceName, s.opts.Names)
	snap.Unattributed = joined.Unattributed
	unauthorized = append(unauthorized, joined.Unauthorized...)
	snap.Unauthorized = unauthorized
	blind := map[string]bool{}
	for _, d := range snap.Devices {
		if d.Blind() {
			blind[d.UUID] = true
		}
	}
	podUID := map[[3]string]string{}
	for _, a := range joined.Attributed {
		podUID[[3]string{a.Assignment.Namespace, a.Assignment.Pod, a.Assignment.Container}] = a.PodUID
	}

	// One entry per container and GPU it holds slices of, with or without
	// processes.
	entries := map[containerKey]*Container{}
	allocated := map[string]int{}
	granted := GrantsByDevices(checkpoint, s.opts.ResourceName)
	for _, a := range s.assignments {
		limits, err := LimitsFor(s.layout, a.DeviceIDs, granted[DevicesKey(a.DeviceIDs)])
		if err != nil {
			s.fail(SourcePodResources, fmt.Errorf("%s/%s/%s: %w", a.Namespace, a.Pod, a.Container, err))
			continue
		}
		for _, l := range limits {
			k := containerKey{a.Namespace, a.Pod, a.Container, l.UUID}
			entries[k] = &Container{
				Namespace: a.Namespace, Pod: a.Pod, Container: a.Container,
				PodUID: podUID[[3]string{a.Namespace, a.Pod, a.Container}],
				GPU:    l.UUID, Index: l.Index, Slices: l.Slices,
				MemoryLimitBytes: l.MemoryBytes, ComputeLimitRatio: l.ComputeRatio,
			}
			allocated[l.UUID] += l.Slices
		}
	}
	for _, a := range joined.Attributed {
		e := entries[containerKey{a.Assignment.Namespace, a.Assignment.Pod, a.Assignment.Container, a.GPU}]
		if e == nil {
			continue
		}
		p := usage[gpuPID{a.GPU, a.PID}]
		e.MemoryUsedBytes += p.MemoryBytes
		e.SMUtilization += p.SMUtilization
		e.Processes++
		e.Procs = append(e.Procs, p)
		// The pod's cgroup holds the container's too: once one process
		// runs there, only the pod's cgroup contains them all.
		if e.Cgroup.Key() == "" || a.Container.PodLevel() {
			e.Cgroup = a.Container
		}
	}
	for k, e := range entries {
		e.SMUtilization = min(e.SMUtilization, 1)
		acc := s.accums[k]
		if acc == nil {
			acc = &accum{}
			s.accums[k] = acc
		}
		if blind[e.GPU] {
			// Nothing is known of its use: no made-up zero, no integration,
			// and the cgroup last seen, so enforcement holds what it had.
			e.Blind = true
			e.Cgroup = acc.cgroup
			e.BusySeconds, e.LastActive = acc.busy, acc.lastActive
			snap.Containers = append(snap.Containers, *e)
			continue
		}
		acc.cgroup = e.Cgroup
		acc.busy += e.SMUtilization * dt.Seconds()
		if e.SMUtilization > 0 {
			acc.lastActive = start
		}
		e.BusySeconds, e.LastActive = acc.busy, acc.lastActive
		snap.Containers = append(snap.Containers, *e)
	}
	for k := range s.accums {
		if _, ok := entries[k]; !ok {
			delete(s.accums, k) // the container let go of the GPU: its series end
		}
	}
	sort.Slice(snap.Containers, func(i, j int) bool {
		a, b := snap.Containers[i], snap.Containers[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Pod != b.Pod {
			return a.Pod < b.Pod
		}
		if a.Container != b.Container {
			return a.Container < b.Container
		}
		return a.Index < b.Index
	})
	for i := range snap.Devices {
		snap.Devices[i].Allocated = allocated[snap.Devices[i].UUID]
	}
	for k, v := range s.errors {
		snap.Errors[k] = v
	}
	snap.Duration = s.opts.Now().Sub(start)
	secs := snap.Duration.Seconds()
	s.durations.Count++
	s.durations.Sum += secs
	for i, b := range DurationBuckets {
		if secs <= b {
			s.durations.Counts[i]++
		}
	}
	snap.Durations = Histogram{Counts: append([]uint64(nil), s.durations.Counts...), Count: s.durations.Count, Sum: s.durations.Sum}
	s.latest.Store(snap)
	if s.opts.OnSample != nil {
		s.opts.OnSample(snap)
	}
}
