package fakegpu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu/protocol"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// WorkloadState is what a fake GPU workload publishes about itself; see
// protocol.WorkloadState.
type WorkloadState = protocol.WorkloadState

// WriteWorkloadState publishes a workload's state atomically.
func WriteWorkloadState(dir string, pid int, st WorkloadState) error {
	return protocol.WriteWorkloadState(dir, pid, st)
}

// minWindow is the shortest accounting window; calls closer together than
// this reuse the last window's results.
const minWindow = 10 * time.Millisecond

// gpuPhysics is what the fake GPU did in the last accounting window.
type gpuPhysics struct {
	utilization float64
	memoryUsed  uint64
	energyJ     float64
	procs       []nvml.Process
	// busyNs is the GPU time served in all, the counter GPM samples on
	// a MIG instance.
	busyNs float64
}

// workloadsLocked reads the live workloads in the workload dir, removing
// the files of processes that are gone.
func (n *Node) workloadsLocked() map[int]WorkloadState {
	out := map[int]WorkloadState{}
	if n.workDir == "" {
		return out
	}
	entries, err := os.ReadDir(n.workDir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		pid, err := strconv.Atoi(name)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		path := filepath.Join(n.workDir, e.Name())
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			_ = os.Remove(path) // the workload is gone; its file is stale
			continue
		}
		data, err := os.ReadFile(path) //nolint:gosec // the node's own workload dir
		if err != nil {
			continue
		}
		var s WorkloadState
		if json.Unmarshal(data, &s) != nil || s.Demand < 0 || s.Demand > 1 {
			continue
		}
		out[pid] = s
	}
	return out
}

// advanceLocked accounts GPU time since the last window: each GPU serves
// the time its workloads asked for, scaled down in proportion when they
// asked for more than the window holds.
func (n *Node) advanceLocked(now time.Time) {
	dt := now.Sub(n.lastAdvance)
	if dt < minWindow {
		return
	}
	from := n.lastAdvance
	n.lastAdvance = now
	work := n.workloadsLocked()
	asked := map[string]map[int]int64{} // GPU UUID -> pid -> ns asked this window
	memory := map[string]uint64{}
	n.admitLocked(work)
	for pid, w := range work {
		prev, seen := n.requested[pid]
		n.requested[pid] = w.RequestedNanos
		memory[w.GPU] += n.admitted[pid]
		if !seen || w.RequestedNanos < prev {
			continue
		}
		if asked[w.GPU] == nil {
			asked[w.GPU] = map[int]int64{}
		}
		asked[w.GPU][pid] = w.RequestedNanos - prev
	}
	for pid := range n.requested {
		if _, ok := work[pid]; !ok {
			delete(n.requested, pid)
			delete(n.served, pid)
		}
	}
	for _, u := range n.unitsLocked() {
		d := u.dev
		ph := n.physics[u.uuid]
		var total int64
		for _, ns := range asked[u.uuid] {
			total += ns
		}
		scale := 1.0
		if total > int64(dt) {
			scale = float64(dt) / float64(total)
		}
		ph.procs = ph.procs[:0]
		served := 0.0
		window := map[int]float64{}
		for pid, w := range work {
			if w.GPU != u.uuid {
				continue
			}
			got := float64(asked[u.uuid][pid]) * scale
			served += got
			n.served[pid] += got
			window[pid] = got
			ph.procs = append(ph.procs, nvml.Process{PID: pid, MemoryBytes: n.admitted[pid], SMUtilization: min(got/float64(dt), 1)})
		}
		sort.Slice(ph.procs, func(i, j int) bool { return ph.procs[i].PID < ph.procs[j].PID })
		ph.utilization = min(served/float64(dt), 1)
		ph.busyNs += min(served, float64(dt))
		ph.memoryUsed = memory[u.uuid]
		ph.energyJ += n.power(d, ph.utilization) * dt.Seconds()
		n.physics[u.uuid] = ph
		if u.parent != "" {
			continue // the driver samples no utilization on a MIG instance
		}
		b := n.bins[u.uuid]
		if b == nil {
			b = newBins(from)
			n.bins[u.uuid] = b
		}
		b.add(from, now, window)
	}
	n.sumInstancesLocked()
}

// unit is what serves GPU time in the fake: a GPU used whole, or one MIG
// instance in force. An instance has its own SMs, so the contexts on it
// time-share it alone: a busy instance takes no time from the others on
// its GPU.
type unit struct {
	uuid string
	// dev is the GPU (an instance's parent).
	dev nvml.Device
	// parent is the GPU's UUID when the unit is a MIG instance.
	parent string
	// memoryBytes is the unit's framebuffer.
	memoryBytes uint64
}

// unitsLocked lists the node's units: each GPU not in MIG mode, and each
// MIG instance in force. Nothing runs on a GPU in MIG mode outside its
// instances (CUDA cannot use it), so such a GPU is no unit.
func (n *Node) unitsLocked() []unit {
	out := make([]unit, 0, len(n.devices))
	for _, d := range n.devices {
		if !d.MIG.Current {
			out = append(out, unit{uuid: d.UUID, dev: d, memoryBytes: d.MemoryBytes})
			continue
		}
		for _, in := range d.MIG.Instances {
			out = append(out, unit{uuid: in.UUID, dev: d, parent: d.UUID, memoryBytes: in.MemoryBytes})
		}
	}
	return out
}

// sumInstancesLocked gives each GPU in MIG mode the memory its instances
// use, as the driver reports it for the whole GPU, and none of their
// processes: they are listed on their instances.
func (n *Node) sumInstancesLocked() {
	for _, d := range n.devices {
		if !d.MIG.Current {
			continue
		}
		ph := n.physics[d.UUID]
		ph.memoryUsed, ph.utilization, ph.procs = 0, 0, nil
		for _, in := range d.MIG.Instances {
			ph.memoryUsed += n.physics[in.UUID].memoryUsed
		}
		n.physics[d.UUID] = ph
	}
}

// Served returns the GPU time the node has served a workload process in
// all: the work it got done, which no NVML reading feeds.
func (n *Node) Served(pid int) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.advanceLocked(n.now())
	return time.Duration(n.served[pid])
}

// power models board power: idle draw plus a share of the rest up to TDP.
func (n *Node) power(d nvml.Device, util float64) float64 {
	tdp := 300.0
	switch {
	case strings.Contains(d.Model, "A100"):
		tdp = 400
	case strings.Contains(d.Model, "H100"), strings.Contains(d.Model, "H200"):
		tdp = 700
	}
	const idle = 60.0
	return idle + util*(tdp-idle)
}

// unitLocked finds a GPU or a MIG instance in force by its UUID; a GPU
// lost takes its instances with it.
func (n *Node) unitLocked(uuid string) (unit, error) {
	for _, d := range n.devices {
		u := unit{uuid: d.UUID, dev: d, memoryBytes: d.MemoryBytes}
		if d.UUID != uuid {
			i := slices.IndexFunc(d.MIG.Instances, func(in nvml.MIGInstance) bool { return in.UUID == uuid })
			if i < 0 || !d.MIG.Current {
				continue
			}
			u = unit{uuid: uuid, dev: d, parent: d.UUID, memoryBytes: d.MIG.Instances[i].MemoryBytes}
		}
		if n.faults[d.Index].Lost {
			return unit{}, errors.New("GPU is lost")
		}
		return u, nil
	}
	return unit{}, fmt.Errorf("no GPU or MIG instance %s", uuid)
}

// Sample reports the GPU's state over the last accounting window.
func (n *Node) Sample(uuid string) (nvml.Sample, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail[CallSample] {
		return nvml.Sample{}, &nvml.ErrCall{Call: "nvmlDeviceGetUtilizationRates", Err: ErrInjected}
	}
	u, err := n.unitLocked(uuid)
	if err != nil {
		return nvml.Sample{}, &nvml.ErrCall{Call: "nvmlDeviceGetHandleByUUID", Err: err}
	}
	d := u.dev
	n.advanceLocked(n.now())
	ph := n.physics[uuid]
	if u.parent != "" {
		// A MIG instance: the driver reports its memory and no
		// utilization; temperature, power and clocks are its GPU's.
		s := nvml.Sample{UUID: uuid, MemoryUsedBytes: ph.memoryUsed, ProcessUtilizationUnsupported: true}
		if gpm(d) {
			s.Utilization = ph.utilization
		} else {
			s.UtilizationUnsupported = true
		}
		return s, nil
	}
	return nvml.Sample{
		UUID:               uuid,
		Utilization:        ph.utilization,
		MemoryUsedBytes:    ph.memoryUsed,
		TemperatureCelsius: 30 + 45*ph.utilization,
		PowerWatts:         n.power(d, ph.utilization),
		EnergyJoules:       ph.energyJ,
		SMClockHertz:       float64(smClockMHz(d)) * 1e6,
	}, nil
}

// Processes reports the GPU's workload processes over the last accounting
// window.
func (n *Node) Processes(uuid string) ([]nvml.Process, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail[CallProcesses] {
		return nil, &nvml.ErrCall{Call: "nvmlDeviceGetComputeRunningProcesses", Err: ErrInjected}
	}
	u, err := n.unitLocked(uuid)
	if err != nil {
		return nil, &nvml.ErrCall{Call: "nvmlDeviceGetHandleByUUID", Err: err}
	}
	n.advanceLocked(n.now())
	procs := append([]nvml.Process(nil), n.physics[uuid].procs...)
	if u.parent != "" {
		// No per-process utilization on a MIG instance
		// (nvmlDeviceGetProcessUtilization answers NOT_SUPPORTED).
		for i := range procs {
			procs[i].SMUtilization = 0
		}
	}
	return procs, nil
}

// gpm reports whether the GPU has GPU performance monitoring, which
// measures a MIG instance's SM utilization: Hopper (compute capability 9)
// and later.
func gpm(d nvml.Device) bool { return d.ComputeMajor >= 9 }

// smClockMHz is the SM clock the fake reports: A100-class or Hopper-class.
func smClockMHz(d nvml.Device) int {
	if d.ComputeMajor >= 9 {
		return 1980
	}
	return 1410
}
