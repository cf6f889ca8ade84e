package enforce

import (
	"time"

	"github.com/gpuslice/gpuslice/pkg/node"
)

// Stats is what enforcement did to one container.
type Stats struct {
	// Throttled is the time the container spent frozen.
	Throttled time.Duration
	// Duty is its current duty, 1 when not throttled.
	Duty float64
	// Compute and Memory say whether the container's compute share and
	// memory limit are held: ReasonEnforced, or why not (Reasons).
	Compute, Memory string
	// MemoryEvents counts the times it went over its GPU memory limit.
	MemoryEvents uint64
	// Kills counts its GPU processes killed for that.
	Kills uint64
	// CgroupKills counts the times every process of its cgroup was killed
	// for going over its limit again after its newest were killed.
	CgroupKills uint64
	// DriverMemoryLimits are the hard limits the driver enforces on the
	// container's cgroup, by GPU UUID; nil without the driver tier.
	DriverMemoryLimits map[string]uint64
}

// UnauthorizedStats counts what was done about unauthorized GPU use.
type UnauthorizedStats struct {
	// Killed counts processes killed; Frozen is how many cgroups are
	// frozen for it now.
	Killed uint64
	Frozen int
}

// DriverStats returns what the driver tier did, as of the last Apply, and
// false without one.
func (e *Enforcer) DriverStats() (DriverStats, bool) {
	v := e.published.Load()
	return v.driver, v.hasDriver
}

func (e *Enforcer) driverLimits() map[string]map[string]uint64 {
	if e.driver == nil {
		return nil
	}
	return e.driver.Limits()
}

// collectStats is what enforcement did to each seen container.
func (e *Enforcer) collectStats(seen map[string]node.Container) map[string]Stats {
	stats := make(map[string]Stats, len(seen))
	memory := e.watchdog.Stats()
	driver := e.driverLimits()
	for id := range seen {
		mem := memory[id]
		c := seen[id]
		s := Stats{Duty: 1, Throttled: e.finished[id], MemoryEvents: mem.Events, Kills: mem.Kills, CgroupKills: mem.CgroupKills, DriverMemoryLimits: driver[id],
			Compute: e.computeReason(c.Cgroup, e.freezers[id].File != ""), Memory: e.memoryReason()}
		if t := e.throttles[id]; t != nil {
			s.Duty = t.Duty()
			s.Throttled += t.Throttled()
		}
		stats[id] = s
	}
	return stats
}

// Stats returns what enforcement did, by container ID, as of the last
// Apply. It never waits on an enforcement round.
func (e *Enforcer) Stats() map[string]Stats {
	v := e.published.Load()
	out := make(map[string]Stats, len(v.stats))
	for k, s := range v.stats {
		out[k] = s
	}
	return out
}

// Failures counts containers that could not be enforced and cgroups that
// vanished under a throttle, as of the last Apply.
func (e *Enforcer) Failures() uint64 { return e.published.Load().failures }

// memoryOnlyStats reports the watchdog's work when the throttle is off.
func (e *Enforcer) memoryOnlyStats(snap *node.Snapshot) map[string]Stats {
	mem := e.watchdog.Stats()
	driver := e.driverLimits()
	out := map[string]Stats{}
	for _, c := range snap.Enforced() {
		if id := c.Cgroup.Key(); id != "" {
			m := mem[id]
			out[id] = Stats{Duty: 1, MemoryEvents: m.Events, Kills: m.Kills, CgroupKills: m.CgroupKills, DriverMemoryLimits: driver[id],
				Compute: e.computeReason(c.Cgroup, false), Memory: e.memoryReason()}
		}
	}
	return out
}

// Node says whether each tier can engage on the node at all, as found
// when the enforcer started.
func (e *Enforcer) Node() NodeState { return e.published.Load().node }

// Tiers names the strongest mechanism holding each resource: "freezer" or
// "none" for compute; "driver" (the driver's per-cgroup limits),
// "watchdog" or "none" for memory.
func (e *Enforcer) Tiers() (compute, memory string) {
	v := e.published.Load()
	return v.compute, v.memory
}

func (e *Enforcer) tiersLocked() (compute, memory string) {
	compute, memory = "none", "none"
	switch {
	case e.opts.MPS:
		compute = "mps"
	case e.opts.Compute:
		compute = "freezer"
	}
	switch {
	case e.driver != nil:
		memory = "driver"
	case e.opts.Memory != MemoryOff:
		memory = "watchdog"
	}
	return compute, memory
}
