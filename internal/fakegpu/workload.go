package fakegpu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	for _, d := range n.devices {
		ph := n.physics[d.UUID]
		var total int64
		for _, ns := range asked[d.UUID] {
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
			if w.GPU != d.UUID {
				continue
			}
			got := float64(asked[d.UUID][pid]) * scale
			served += got
			n.served[pid] += got
			window[pid] = got
			ph.procs = append(ph.procs, nvml.Process{PID: pid, MemoryBytes: n.admitted[pid], SMUtilization: min(got/float64(dt), 1)})
		}
		sort.Slice(ph.procs, func(i, j int) bool { return ph.procs[i].PID < ph.procs[j].PID })
		ph.utilization = min(served/float64(dt), 1)
		ph.memoryUsed = memory[d.UUID]
		ph.energyJ += n.power(d, ph.utilization) * dt.Seconds()
		n.physics[d.UUID] = ph
		b := n.bins[d.UUID]
		if b == nil {
			b = newBins(from)
			n.bins[d.UUID] = b
		}
		b.add(from, now, window)
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

func (n *Node) deviceLocked(uuid string) (nvml.Device, error) {
	for _, d := range n.devices {
		if d.UUID != uuid {
			continue
		}
		if n.faults[d.Index].Lost {
			return nvml.Device{}, errors.New("GPU is lost")
		}
		return d, nil
	}
	return nvml.Device{}, fmt.Errorf("no GPU %s", uuid)
}

// Sample reports the GPU's state over the last accounting window.
func (n *Node) Sample(uuid string) (nvml.Sample, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail[CallSample] {
		return nvml.Sample{}, &nvml.ErrCall{Call: "nvmlDeviceGetUtilizationRates", Err: ErrInjected}
	}
	d, err := n.deviceLocked(uuid)
	if err != nil {
		return nvml.Sample{}, &nvml.ErrCall{Call: "nvmlDeviceGetHandleByUUID", Err: err}
	}
	n.advanceLocked(n.now())
	ph := n.physics[uuid]
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
	if _, err := n.deviceLocked(uuid); err != nil {
		return nil, &nvml.ErrCall{Call: "nvmlDeviceGetHandleByUUID", Err: err}
	}
	n.advanceLocked(n.now())
	return append([]nvml.Process(nil), n.physics[uuid].procs...), nil
}

// smClockMHz is the SM clock the fake reports: A100-class or Hopper-class.
func smClockMHz(d nvml.Device) int {
	if d.ComputeMajor >= 9 {
		return 1980
	}
	return 1410
}
