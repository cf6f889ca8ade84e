package fakegpu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// ErrInjected is the error injected backend calls fail with.
var ErrInjected = errors.New("injected NVML error")

// Node is a fake GPU node. It is safe for concurrent use.
type Node struct {
	devices []nvml.Device
	presets []string // by index: the preset each GPU was built from
	// migGeneration counts MIG layout changes, so instances created anew
	// get UUIDs no earlier instance had.
	migGeneration int
	system        nvml.SystemInfo

	mu      sync.Mutex
	faults  map[int]GPUFault // by index
	fail    map[string]bool  // call -> fails
	changed chan struct{}    // closed and replaced on every fault change
	closed  bool
	xids    []xidEvent // every XID reported, oldest first
	seq     int64

	workDir     string
	now         func() time.Time
	lastAdvance time.Time
	requested   map[int]int64    // pid -> RequestedNanos seen last window
	served      map[int]float64  // pid -> GPU time served in all, ns
	bins        map[string]*bins // by GPU UUID: the fake driver's sample periods
	physics     map[string]gpuPhysics

	driverLimits bool
	limits       map[limitKey]nvml.MemoryLimits
	limitSetAt   map[limitKey]time.Time
	admitted     map[int]uint64 // pid -> GPU memory the fake driver granted
	gpuOf        map[int]string // pid -> GPU UUID
	leaked       uint64         // soft limits of cgroups removed without clearing them
}

var _ nvml.Backend = (*Node)(nil)

// New builds a node from cfg, with cfg's faults in force.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	specs, _ := cfg.gpus()
	cuda, _ := cfg.cudaVersion()
	drv := cfg.DriverVersion
	if drv == "" {
		drv = "570.124.06"
	}
	n := &Node{
		system:      nvml.SystemInfo{DriverVersion: drv, CUDADriverVersion: cuda},
		changed:     make(chan struct{}),
		workDir:     cfg.WorkloadDir,
		now:         time.Now,
		lastAdvance: time.Now(),
		requested:   map[int]int64{},
		served:      map[int]float64{},
		bins:        map[string]*bins{},
		physics:     map[string]gpuPhysics{},

		driverLimits: cfg.DriverMemoryLimits,
		limits:       map[limitKey]nvml.MemoryLimits{},
		limitSetAt:   map[limitKey]time.Time{},
		admitted:     map[int]uint64{},
		gpuOf:        map[int]string{},
	}
	for i, s := range specs {
		n.devices = append(n.devices, nvml.Device{
			UUID:         s.uuid,
			Index:        i,
			Minor:        i,
			Model:        s.model,
			MemoryBytes:  s.memoryBytes,
			ComputeMajor: s.ccMajor,
			ComputeMinor: s.ccMinor,
			PCIBusID:     fmt.Sprintf("00000000:%02X:00.0", 0x07+i*0x10),
			NUMANode:     s.numaNode,
			MIGCapable:   s.mig,
			MIG:          s.migState,
		})
		n.presets = append(n.presets, s.preset)
	}
	n.setFaults(cfg.Faults)
	return n, nil
}

// Devices returns the node's GPUs. A lost GPU is left out, as NVML cannot
// enumerate it, and reported in the error.
func (n *Node) Devices() ([]nvml.Device, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail[CallDevices] {
		return nil, &nvml.ErrCall{Call: "nvmlDeviceGetCount", Err: ErrInjected}
	}
	out := make([]nvml.Device, 0, len(n.devices))
	var errs []error
	for _, d := range n.devices {
		if n.faults[d.Index].Lost {
			errs = append(errs, fmt.Errorf("gpu %d: %w", d.Index, &nvml.ErrCall{Call: "nvmlDeviceGetHandleByIndex", Err: errors.New("GPU is lost")}))
			continue
		}
		d.MIG.Instances = slices.Clone(d.MIG.Instances)
		out = append(out, d)
	}
	return out, errors.Join(errs...)
}

// System returns the configured driver and CUDA versions.
func (n *Node) System() (nvml.SystemInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail[CallSystem] {
		return nvml.SystemInfo{}, &nvml.ErrCall{Call: "nvmlSystemGetDriverVersion", Err: ErrInjected}
	}
	return n.system, nil
}

// Close ends every WatchHealth call.
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.closed {
		n.closed = true
		close(n.changed)
	}
	return nil
}

// WatchHealth reports every GPU's health, then each change made by
// InjectXID, Lose, Recover or SetFaults, until ctx ends or the node is closed.
func (n *Node) WatchHealth(ctx context.Context, report func(nvml.Health)) error {
	n.mu.Lock()
	if n.fail[CallWatchHealth] {
		n.mu.Unlock()
		return &nvml.ErrCall{Call: "nvmlEventSetCreate", Err: ErrInjected}
	}
	n.mu.Unlock()
	last := map[string]nvml.Health{}
	for {
		n.mu.Lock()
		now, changed, closed := n.healthLocked(), n.changed, n.closed
		n.mu.Unlock()
		for _, h := range now {
			prev, seen := last[h.UUID]
			if seen && prev.Healthy == h.Healthy && prev.XID == h.XID && prev.Reason == h.Reason {
				continue
			}
			if seen && h.Healthy {
				h.Reason = nvml.ReasonRecovered
			}
			last[h.UUID] = h
			report(h)
		}
		if closed {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func (n *Node) healthLocked() []nvml.Health {
	out := make([]nvml.Health, 0, len(n.devices))
	for _, d := range n.devices {
		f, faulty := n.faults[d.Index]
		switch {
		case !faulty || f.GPUInstance != nil:
			out = append(out, nvml.Health{UUID: d.UUID, Healthy: true})
		case f.Lost:
			out = append(out, nvml.Health{UUID: d.UUID, Reason: nvml.ReasonLost})
		default:
			out = append(out, nvml.Health{UUID: d.UUID, Reason: nvml.ReasonXID, XID: f.XID})
		}
		if !d.MIG.Current {
			continue
		}
		// Each MIG instance's own health: an XID put on its GPU instance.
		for _, in := range d.MIG.Instances {
			h := nvml.Health{UUID: in.UUID, Parent: d.UUID, Healthy: true}
			if faulty && f.GPUInstance != nil && *f.GPUInstance == in.GPUInstanceID {
				h = nvml.Health{UUID: in.UUID, Parent: d.UUID, Reason: nvml.ReasonXID, XID: f.XID}
			}
			out = append(out, h)
		}
	}
	return out
}

// checkInstancesLocked refuses a fault on a GPU instance the GPU does not
// have.
func (n *Node) checkInstancesLocked(f Faults) error {
	for _, g := range f.GPUs {
		if g.GPUInstance == nil {
			continue
		}
		d := n.devices[g.Index]
		found := false
		for _, in := range d.MIG.Instances {
			found = found || (d.MIG.Current && in.GPUInstanceID == *g.GPUInstance)
		}
		if !found {
			return fmt.Errorf("fault on gpu %d: no GPU instance %d in MIG mode", g.Index, *g.GPUInstance)
		}
	}
	return nil
}

// InjectXID makes GPU index report a critical XID and become unhealthy.
func (n *Node) InjectXID(index int, xid uint64) error {
	if xid == 0 {
		return errors.New("xid must be non-zero")
	}
	return n.update(func(f *Faults) error {
		return putFault(f, GPUFault{Index: index, XID: xid}, len(n.devices))
	})
}

// InjectInstanceXID makes GPU index report a critical XID on its GPU
// instance gi (MIG): that instance alone becomes unhealthy.
func (n *Node) InjectInstanceXID(index, gi int, xid uint64) error {
	if xid == 0 {
		return errors.New("xid must be non-zero")
	}
	return n.update(func(f *Faults) error {
		return putFault(f, GPUFault{Index: index, XID: xid, GPUInstance: &gi}, len(n.devices))
	})
}

// Lose makes GPU index fall off the bus.
func (n *Node) Lose(index int) error {
	return n.update(func(f *Faults) error {
		return putFault(f, GPUFault{Index: index, Lost: true}, len(n.devices))
	})
}

// Recover clears every fault on GPU index.
func (n *Node) Recover(index int) error {
	return n.update(func(f *Faults) error {
		if index < 0 || index >= len(n.devices) {
			return fmt.Errorf("no gpu %d", index)
		}
		kept := f.GPUs[:0]
		for _, g := range f.GPUs {
			if g.Index != index {
				kept = append(kept, g)
			}
		}
		f.GPUs = kept
		return nil
	})
}

// FailCall makes a backend call (CallDevices, CallSystem, CallWatchHealth)
// fail with ErrInjected, or succeed again.
func (n *Node) FailCall(call string, fail bool) error {
	return n.update(func(f *Faults) error {
		kept := []string{}
		for _, c := range f.FailCalls {
			if c != call {
				kept = append(kept, c)
			}
		}
		if fail {
			kept = append(kept, call)
		}
		f.FailCalls = kept
		return nil
	})
}

// SetFaults replaces the faults in force.
func (n *Node) SetFaults(f Faults) error {
	return n.update(func(cur *Faults) error {
		*cur = f
		return nil
	})
}

// Faults returns the faults in force.
func (n *Node) Faults() Faults {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.faultsLocked()
}

func (n *Node) faultsLocked() Faults {
	var f Faults
	for _, d := range n.devices {
		if g, ok := n.faults[d.Index]; ok {
			f.GPUs = append(f.GPUs, g)
		}
	}
	for _, c := range calls {
		if n.fail[c] {
			f.FailCalls = append(f.FailCalls, c)
		}
	}
	return f
}

func putFault(f *Faults, g GPUFault, n int) error {
	if g.Index < 0 || g.Index >= n {
		return fmt.Errorf("no gpu %d", g.Index)
	}
	for i := range f.GPUs {
		if f.GPUs[i].Index == g.Index {
			f.GPUs[i] = g
			return nil
		}
	}
	f.GPUs = append(f.GPUs, g)
	return nil
}

// update applies fn to a copy of the faults, validates the result and puts
// it in force, waking watchers. On error nothing changes.
func (n *Node) update(fn func(*Faults) error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	f := n.faultsLocked()
	if err := fn(&f); err != nil {
		return err
	}
	if err := f.validate(len(n.devices)); err != nil {
		return err
	}
	if err := n.checkInstancesLocked(f); err != nil {
		return err
	}
	n.setFaultsLocked(f)
	return nil
}

func (n *Node) setFaults(f Faults) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.setFaultsLocked(f)
}

func (n *Node) setFaultsLocked(f Faults) {
	prev := n.faults
	n.faults = map[int]GPUFault{}
	for _, g := range f.GPUs {
		n.faults[g.Index] = g
		// A new or different XID is a new event on the driver's stream.
		if g.XID != 0 && (prev[g.Index].XID != g.XID || instanceOf(prev[g.Index]) != instanceOf(g)) {
			n.seq++
			n.xids = append(n.xids, xidEvent{gpu: g.Index, xid: g.XID, seq: n.seq, gi: instanceOf(g)})
		}
	}
	n.fail = map[string]bool{}
	for _, c := range f.FailCalls {
		n.fail[c] = true
	}
	n.notifyLocked()
}

// instanceOf is the GPU instance a fault's XID is on, -1 for the GPU.
func instanceOf(f GPUFault) int {
	if f.GPUInstance == nil {
		return -1
	}
	return *f.GPUInstance
}

// notifyLocked wakes every watcher of the node's state.
func (n *Node) notifyLocked() {
	if !n.closed {
		close(n.changed)
		n.changed = make(chan struct{})
	}
}
