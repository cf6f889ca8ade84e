package enforce

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// Why a resource is or is not held, per container and per node: the
// reason label of gpuslice_enforcement_enforced and
// gpuslice_enforcement_available. A small fixed set, so alerts and
// dashboards can match it.
const (
	// ReasonEnforced: the resource is held.
	ReasonEnforced = "enforced"
	// ReasonDisabled: the administrator turned the tier off
	// (--enforce-compute=false, --memory-policy=off).
	ReasonDisabled = "disabled"
	// ReasonReportOnly: memory overruns are logged and reported, never
	// acted on (--memory-policy=log).
	ReasonReportOnly = "report-only"
	// ReasonCgroupUnresolved: the container's cgroup path is relative to a
	// cgroup namespace whose place in the host's hierarchy the agent could
	// not find, so its cgroup cannot be reached.
	ReasonCgroupUnresolved = "cgroup-unresolved"
	// ReasonNoFreezer: the container's cgroup has no freezer under
	// --cgroup-root (the host's cgroup filesystem is not mounted there, or
	// neither cgroup v2's cgroup.freeze nor the v1 freezer exists).
	ReasonNoFreezer = "no-freezer"
	// ReasonPodLevel: a process of the container's pod could not be placed
	// in one of its containers, so the container is held together with
	// its pod's other containers on the GPU, to the total they hold, at
	// the pod's level (per container, only; the node never reads it).
	ReasonPodLevel = "pod-level"
	// ReasonMIG: the container holds a whole MIG instance, whose memory
	// and SMs the GPU itself isolates; no gpuslice tier needs to engage
	// (per container, only).
	ReasonMIG = "mig"
)

// NodeState says whether each tier can engage on the node at all: the
// reason is ReasonEnforced where it can.
type NodeState struct {
	Compute, Memory string
}

// CannotEngage says which tiers cannot engage on the node and why, or ""
// when every tier can or was turned off by the administrator (a choice,
// not a failure).
func (n NodeState) CannotEngage() string {
	var why []string
	for _, t := range []struct{ tier, reason string }{{"compute", n.Compute}, {"memory", n.Memory}} {
		if CannotHold(t.reason) {
			why = append(why, "the "+t.tier+" tier cannot engage ("+t.reason+")")
		}
	}
	return strings.Join(why, "; ")
}

// ContainerReasons says whether a container's compute share and memory
// limit are held: as the node can (n) until the enforcer has seen it (st
// from Enforcer.Stats, seen when it has a round of its own), at its pod's
// level when it is Unknown (its processes could not be placed in one of
// the pod's containers). gpuslice_enforcement_enforced and the DRA claims'
// Enforced condition both read it.
func ContainerReasons(n NodeState, st Stats, seen, unknown bool) (compute, memory string) {
	compute, memory = n.Compute, n.Memory
	if seen && st.Compute != "" {
		compute, memory = st.Compute, st.Memory
	}
	if unknown {
		compute, memory = podLevel(compute), podLevel(memory)
	}
	return compute, memory
}

// podLevel is the reason of a container held at its pod's level: its
// pod's, unless that is held.
func podLevel(reason string) string {
	if reason == ReasonEnforced {
		return ReasonPodLevel
	}
	return reason
}

// Held reports a reason under which the share is held: enforced,
// pod-level, or by the hardware (mig).
func Held(reason string) bool {
	return reason == ReasonEnforced || reason == ReasonPodLevel || reason == ReasonMIG
}

// CannotHold reports a reason that is a failure to hold a share, not held
// and not the administrator's choice (disabled, report-only).
func CannotHold(reason string) bool {
	return !Held(reason) && reason != ReasonDisabled && reason != ReasonReportOnly
}

// CheckNode reports whether the tiers the options ask for can engage on
// this node: compute needs a freezer under the cgroup root (cgroup v2 with
// cgroup.freeze, or the v1 freezer) and, where the agent runs in a private
// cgroup namespace, that namespace placed in the host's hierarchy
// (nsErr is what placing it returned).
func CheckNode(o Options, nsErr error) NodeState {
	s := NodeState{Compute: ReasonEnforced, Memory: ReasonEnforced}
	switch {
	case o.MPS:
	case !o.Compute:
		s.Compute = ReasonDisabled
	case nsErr != nil:
		s.Compute = ReasonCgroupUnresolved
	case !freezerOnHost(o.CgroupRoot):
		s.Compute = ReasonNoFreezer
	}
	switch o.Memory {
	case MemoryOff:
		s.Memory = ReasonDisabled
	case MemoryLog:
		s.Memory = ReasonReportOnly
	}
	return s
}

// freezerOnHost reports a freezer the throttle can use under cgroupRoot: a
// cgroup v2 hierarchy whose cgroups have cgroup.freeze (Linux 5.2+; the
// root has none, so a child is looked at), or the v1 freezer hierarchy.
func freezerOnHost(cgroupRoot string) bool {
	// The v1 freezer's root has no freezer.state; every cgroup below has.
	if _, err := os.Stat(filepath.Join(cgroupRoot, "freezer", "cgroup.procs")); err == nil {
		return true
	}
	v2, err := host.CgroupV2Root(cgroupRoot)
	if err != nil {
		return false
	}
	entries, err := os.ReadDir(v2)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(v2, e.Name(), "cgroup.freeze")); err == nil {
			return true
		}
	}
	return false
}

// computeReason is why a container's compute share is or is not held,
// given whether its freezer was found.
func (e *Enforcer) computeReason(c node.Cgroup, haveFreezer bool) string {
	switch {
	case e.opts.MPS:
		return ReasonEnforced
	case !e.opts.Compute:
		return ReasonDisabled
	case haveFreezer:
		return ReasonEnforced
	case c.Unresolved != "":
		return ReasonCgroupUnresolved
	}
	return ReasonNoFreezer
}

// memoryReason is why containers' memory is or is not held: the watchdog
// acts on processes by PID, checked against the container each is in, so
// only the policy decides.
func (e *Enforcer) memoryReason() string {
	switch e.opts.Memory {
	case MemoryOff:
		return ReasonDisabled
	case MemoryLog:
		return ReasonReportOnly
	}
	return ReasonEnforced
}

// unreachableDetail says, for an Event, why a container's cgroup could not
// be reached.
func unreachableDetail(c node.Cgroup, err error) string {
	if c.Unresolved != "" {
		return c.Unresolved
	}
	return err.Error()
}
