package enforce

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// MemoryPolicy is what the watchdog does to a container over its GPU
// memory limit.
type MemoryPolicy string

const (
	// MemoryKill kills the container's GPU processes, newest first, until
	// it is within its limit; a container still over its limit in the next
	// sample by processes not killed yet (it starts them faster than they
	// are killed) has every process of its cgroup killed. Default.
	MemoryKill MemoryPolicy = "kill"
	// MemoryLog only logs and counts.
	MemoryLog MemoryPolicy = "log"
	// MemoryOff turns the watchdog off.
	MemoryOff MemoryPolicy = "off"
)

// ParseMemoryPolicy accepts kill, log and off; empty is kill.
func ParseMemoryPolicy(s string) (MemoryPolicy, error) {
	switch MemoryPolicy(s) {
	case "", MemoryKill:
		return MemoryKill, nil
	case MemoryLog, MemoryOff:
		return MemoryPolicy(s), nil
	}
	return "", fmt.Errorf("unknown memory policy %q (want kill, log or off)", s)
}

// victims picks which processes to kill so that the rest fit in limit:
// the newest first, since the last one started is the one that pushed the
// container over, and killing it spares long-running work. start gives a
// process's start time (larger is newer).
func victims(procs []nvml.Process, limit uint64, start func(pid int) uint64) []nvml.Process {
	var used uint64
	for _, p := range procs {
		used += p.MemoryBytes
	}
	if used <= limit {
		return nil
	}
	sorted := append([]nvml.Process(nil), procs...)
	sort.SliceStable(sorted, func(i, j int) bool {
		si, sj := start(sorted[i].PID), start(sorted[j].PID)
		if si != sj {
			return si > sj
		}
		return sorted[i].PID > sorted[j].PID
	})
	var out []nvml.Process
	for _, p := range sorted {
		if used <= limit {
			break
		}
		out = append(out, p)
		used -= min(used, p.MemoryBytes)
	}
	return out
}

// startTime reads a process's start time (field 22 of /proc/<pid>/stat,
// in clock ticks since boot); 0 when unreadable.
func startTime(procRoot string, pid int) uint64 {
	data, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat")) //nolint:gosec // procRoot is the operator's flag
	if err != nil {
		return 0
	}
	// The command name in field 2 may hold spaces and parentheses: fields
	// are counted after its closing parenthesis.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(fields[19], 10, 64)
	return v
}

// MemoryStats is what the watchdog did to one container.
type MemoryStats struct {
	// Events counts the times the container went over its limit.
	Events uint64
	// Kills counts the processes killed.
	Kills uint64
	// CgroupKills counts the times every process of its cgroup was killed
	// for a repeated overrun.
	CgroupKills uint64
	over        bool
	// killed are the PIDs killed that NVML still lists: their memory is
	// on its way out, and is not counted again.
	killed map[int]bool
}

// Watchdog holds containers to their GPU memory limits where the driver
// cannot: it sums each container's processes' memory every sample.
type Watchdog struct {
	policy     MemoryPolicy
	procRoot   string
	cgroupRoot string         // where the cgroup filesystems are mounted
	ns         host.Namespace // the agent's cgroup namespace
	log        *slog.Logger
	stats      map[MemoryKey]*MemoryStats
	kill       func(pid int) error
	events     events.Recorder
	// killCgroup kills every process of a held cgroup.
	killCgroup func(c node.Cgroup) error
}

// NewWatchdog returns a watchdog acting by policy and recording an Event
// on the pod for each overrun and kill.
func NewWatchdog(policy MemoryPolicy, procRoot string, log *slog.Logger, rec events.Recorder) *Watchdog {
	if rec == nil {
		rec = events.Discard{}
	}
	w := &Watchdog{policy: policy, procRoot: procRoot, log: log, stats: map[MemoryKey]*MemoryStats{}, events: rec,
		kill: func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }}
	w.killCgroup = func(c node.Cgroup) error { return KillCgroup(w.cgroupRoot, c) }
	return w
}

// Apply checks every container in the snapshot against its limit: plan,
// then act.
func (w *Watchdog) Apply(snap *node.Snapshot) { w.Act(snap, w.Plan(snap)) }

// MemoryKey names one container's limit on one GPU: its cgroup's key and
// the GPU's UUID. Each GPU's limit is held apart: a container within its
// limit on one GPU is still over it on another.
type MemoryKey struct{ Cgroup, UUID string }

// Plan decides what the watchdog does to each container the snapshot
// enforces, on each GPU (PlanMemory). A container on a blind GPU gets no
// plan there: its use is unknown this sample. It reads processes' start
// times and changes nothing.
func (w *Watchdog) Plan(snap *node.Snapshot) map[MemoryKey]MemoryPlan {
	if w.policy == MemoryOff {
		return nil
	}
	start := func(pid int) uint64 { return startTime(w.procRoot, pid) }
	out := map[MemoryKey]MemoryPlan{}
	for _, c := range snap.Enforced() {
		k := MemoryKey{c.Cgroup.Key(), c.UUID}
		if k.Cgroup == "" || c.Blind {
			continue
		}
		var st MemoryStats
		if cur := w.stats[k]; cur != nil {
			st = *cur
		}
		out[k] = PlanMemory(c, st, w.policy, start)
	}
	return out
}

// Act carries out the plans and forgets the containers the snapshot no
// longer has.
func (w *Watchdog) Act(snap *node.Snapshot, plans map[MemoryKey]MemoryPlan) {
	if w.policy == MemoryOff {
		return
	}
	seen := map[MemoryKey]bool{}
	for _, c := range snap.Enforced() {
		k := MemoryKey{c.Cgroup.Key(), c.UUID}
		if k.Cgroup == "" {
			continue
		}
		seen[k] = true
		p, ok := plans[k]
		if !ok {
			continue
		}
		st := w.stats[k]
		if st == nil {
			st = &MemoryStats{}
			w.stats[k] = st
		}
		w.act(c, st, p)
	}
	for k := range w.stats {
		if !seen[k] {
			delete(w.stats, k)
		}
	}
}

// MemoryPlan is what the watchdog decided for one container in one round,
// from its snapshot entry and what the watchdog did before: nothing is done
// while deciding.
type MemoryPlan struct {
	// Used is what its processes not already killed hold; Over is whether
	// that is past its limit.
	Used uint64
	Over bool
	// NewOverrun is an overrun that was not one in the previous round: it
	// is logged and recorded as an Event once.
	NewOverrun bool
	// Kill are its newest processes, killed (policy kill) until it is
	// within its limit, each only if still in its cgroup when acted on.
	Kill []nvml.Process
	// KillCgroup kills every process of its cgroup: it is over again in
	// the round after its newest processes were killed (it starts them
	// faster than they are killed).
	KillCgroup bool
	// Gone are killed PIDs NVML no longer lists: forgotten.
	Gone []int
}

// PlanMemory decides what the watchdog does to one container. Memory of
// processes already killed (st.killed) is not counted: they are dying. A
// container over its limit is a new overrun unless it was over in the
// previous round; under MemoryKill its newest processes are killed until it
// is within, and a container over again by processes not killed yet has its
// cgroup killed. start orders processes by age (larger is newer).
func PlanMemory(c node.Container, st MemoryStats, policy MemoryPolicy, start func(pid int) uint64) MemoryPlan {
	var p MemoryPlan
	listed := map[int]bool{}
	var live []nvml.Process
	for _, proc := range c.Procs {
		listed[proc.PID] = true
		if !st.killed[proc.PID] {
			live = append(live, proc)
			p.Used += proc.MemoryBytes
		}
	}
	for pid := range st.killed {
		if !listed[pid] {
			p.Gone = append(p.Gone, pid)
		}
	}
	sort.Ints(p.Gone)
	if p.Used <= c.MemoryLimitBytes {
		return p
	}
	p.Over, p.NewOverrun = true, !st.over
	switch {
	case policy != MemoryKill:
	case st.over:
		p.KillCgroup, p.Kill = true, live
	default:
		p.Kill = victims(live, c.MemoryLimitBytes, start)
	}
	return p
}

// act carries out one container's plan and keeps what it did in st.
func (w *Watchdog) act(c node.Container, st *MemoryStats, p MemoryPlan) {
	for _, pid := range p.Gone {
		delete(st.killed, pid)
	}
	st.over = p.Over
	if p.NewOverrun {
		st.Events++
		w.log.Warn("container over its gpu memory limit", "namespace", c.Namespace, "pod", c.Pod, "container", c.Container,
			"uuid", c.UUID, "used_bytes", p.Used, "limit_bytes", c.MemoryLimitBytes, "policy", string(w.policy))
		w.events.Warning(events.Pod{Namespace: c.Namespace, Name: c.Pod, UID: c.PodUID}, "GPUMemoryLimitExceeded",
			fmt.Sprintf("Container %s holds %d MiB of GPU %d's memory, more than the %d MiB its slices allow (memory policy %s).",
				c.Container, p.Used>>20, c.Index, c.MemoryLimitBytes>>20, w.policy))
	}
	if len(p.Kill) == 0 && !p.KillCgroup {
		return
	}
	if st.killed == nil {
		st.killed = map[int]bool{}
	}
	if p.KillCgroup {
		w.killAll(c, st, p.Kill, p.Used)
		return
	}
	for _, proc := range p.Kill {
		// PIDs are reused: kill only a process still in this container
		// (or, where the container's processes reach into the pod's
		// cgroup, still in this pod).
		now, err := w.ns.ForPID(w.procRoot, proc.PID)
		if err != nil || !within(now, c.Cgroup) {
			continue
		}
		if err := w.kill(proc.PID); err != nil && !errors.Is(err, syscall.ESRCH) {
			w.log.Error("kill gpu process over memory limit", "pid", proc.PID, "pod", c.Pod, "err", err)
			continue
		}
		st.Kills++
		st.killed[proc.PID] = true
		w.events.Warning(events.Pod{Namespace: c.Namespace, Name: c.Pod, UID: c.PodUID}, "GPUProcessKilled",
			fmt.Sprintf("Killed process %d of container %s, holding %d MiB of GPU %d's memory, to bring the container within its %d MiB.",
				proc.PID, c.Container, proc.MemoryBytes>>20, c.Index, c.MemoryLimitBytes>>20))
		w.log.Warn("killed gpu process over memory limit", "namespace", c.Namespace, "pod", c.Pod, "container", c.Container,
			"uuid", c.UUID, "pid", proc.PID, "process_bytes", proc.MemoryBytes, "limit_bytes", c.MemoryLimitBytes)
	}
}

// killAll kills every process of the container's cgroup (its pod's, where
// it is held at its pod's level) for a repeated overrun.
func (w *Watchdog) killAll(c node.Container, st *MemoryStats, live []nvml.Process, used uint64) {
	if err := w.killCgroup(c.Cgroup); err != nil {
		w.log.Error("kill cgroup over its gpu memory limit again", "namespace", c.Namespace, "pod", c.Pod, "container", c.Container, "err", err)
		return
	}
	st.CgroupKills++
	for _, p := range live {
		st.killed[p.PID] = true
	}
	what := "container " + c.Container
	if c.Container == "" {
		what = "every container of the pod"
	}
	w.events.Warning(events.Pod{Namespace: c.Namespace, Name: c.Pod, UID: c.PodUID}, "GPUMemoryLimitCgroupKilled",
		fmt.Sprintf("Killed every process of %s: it was over its %d MiB of GPU %d's memory (%d MiB) again after its newest GPU processes were killed.",
			what, c.MemoryLimitBytes>>20, c.Index, used>>20))
	w.log.Warn("killed every process of a cgroup over its gpu memory limit again", "namespace", c.Namespace, "pod", c.Pod, "container", c.Container,
		"uuid", c.UUID, "used_bytes", used, "limit_bytes", c.MemoryLimitBytes)
}

// within reports whether a process's cgroup lies in the cgroup held for a
// container: the container's own, or its pod's.
func within(proc, held node.Cgroup) bool {
	if held.PodLevel() {
		return proc.PodUID == held.PodUID
	}
	return proc.Key() == held.Key() && proc.PodUID == held.PodUID
}

// Stats returns what the watchdog did, by container ID (its cgroup's
// key), summed over the GPUs it holds.
func (w *Watchdog) Stats() map[string]MemoryStats {
	out := make(map[string]MemoryStats, len(w.stats))
	for k, v := range w.stats {
		s := out[k.Cgroup]
		s.Events += v.Events
		s.Kills += v.Kills
		s.CgroupKills += v.CgroupKills
		s.over = s.over || v.over
		out[k.Cgroup] = s
	}
	return out
}
