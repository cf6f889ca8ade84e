package enforce

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"syscall"

	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// named fills in the namespace and name of u's pod from its UID where the
// runtime record did not give them.
func (e *Enforcer) named(u node.Unauthorized) node.Unauthorized {
	if u.Namespace != "" || u.PodUID == "" || e.opts.PodByUID == nil {
		return u
	}
	if ns, name, ok := e.opts.PodByUID(u.PodUID); ok {
		u.Namespace, u.Pod = ns, name
	}
	return u
}

// UnauthorizedUse is one process using a GPU its container holds no slice
// of, and what is done about it.
type UnauthorizedUse struct {
	node.Unauthorized
	Action UnauthorizedPolicy
}

// UnauthorizedPlan is what one round decided about unauthorized GPU use;
// nothing is done while deciding.
type UnauthorizedPlan struct {
	// Report are the uses seen for the first time: logged, and recorded
	// as an Event on their pod, once.
	Report []UnauthorizedUse
	// Kill are the processes to kill, each only if it is still where it
	// was seen when acted on.
	Kill []node.Unauthorized
	// Freeze are the cgroups to freeze, by key; Refreeze those frozen
	// already (frozen again every round, whatever thawed them meanwhile);
	// Thaw those frozen that no use holds any more.
	Freeze   map[string]node.Cgroup
	Refreeze []string
	Thaw     []string
	// Forget are the reported PIDs no longer seen.
	Forget []int
}

// PlanUnauthorized decides, by policy, what is done about the round's
// unauthorized uses (named: their pods' namespaces filled in where known),
// given the PIDs reported before and the cgroups frozen before. A use in a
// namespace that is not known, or one exempt, is only reported: exemption
// is by namespace, and a process is never ended on a guess. A process no
// one cgroup holds (its cgroup lines name two containers) is killed under
// freeze too.
func PlanUnauthorized(uses []node.Unauthorized, policy UnauthorizedPolicy, exempt []string, reported map[int]bool, parked map[string]bool) UnauthorizedPlan {
	p := UnauthorizedPlan{Freeze: map[string]node.Cgroup{}}
	seen, want := map[int]bool{}, map[string]bool{}
	for _, u := range uses {
		seen[u.PID] = true
		action := policy
		switch {
		case u.Namespace == "":
			action = UnauthorizedLog
			u.Reason += "; its namespace is unknown, so it is only reported"
		case slices.Contains(exempt, u.Namespace):
			action = UnauthorizedLog
		}
		if !reported[u.PID] {
			p.Report = append(p.Report, UnauthorizedUse{Unauthorized: u, Action: action})
		}
		switch key := u.Container.Key(); {
		case action == UnauthorizedLog:
		case action == UnauthorizedFreeze && key != "":
			if want[key] {
				continue
			}
			want[key] = true
			if parked[key] {
				p.Refreeze = append(p.Refreeze, key)
			} else {
				p.Freeze[key] = u.Container
			}
		default:
			p.Kill = append(p.Kill, u)
		}
	}
	for pid := range reported {
		if !seen[pid] {
			p.Forget = append(p.Forget, pid)
		}
	}
	for key := range parked {
		if !want[key] {
			p.Thaw = append(p.Thaw, key)
		}
	}
	sort.Ints(p.Forget)
	sort.Strings(p.Refreeze)
	sort.Strings(p.Thaw)
	return p
}

// actUnauthorized carries out one round's plan.
func (e *Enforcer) actUnauthorized(p UnauthorizedPlan) {
	for _, r := range p.Report {
		u := r.Unauthorized
		e.reported[u.PID] = true
		e.log.Warn("unauthorized gpu use", "namespace", u.Namespace, "pod", u.Pod, "container", u.ContainerName, "pod_uid", u.PodUID,
			"uuid", u.UUID, "pid", u.PID, "reason", u.Reason, "action", string(r.Action))
		if u.Pod != "" {
			e.opts.Events.Warning(events.Pod{Namespace: u.Namespace, Name: u.Pod, UID: u.PodUID}, "GPUUseUnauthorized",
				fmt.Sprintf("Process %d uses GPU %s without holding a slice of it (%s); action: %s.", u.PID, u.UUID, u.Reason, r.Action))
		}
	}
	for _, pid := range p.Forget {
		delete(e.reported, pid)
	}
	for _, u := range p.Kill {
		e.killUnauthorized(u)
	}
	for _, key := range p.Refreeze {
		_ = e.parked[key].Freeze()
	}
	changed := false
	for key, c := range p.Freeze {
		f, err := FreezerFor(e.opts.CgroupRoot, c)
		f.Owner = e.owner
		if err == nil {
			err = f.Freeze()
		}
		if err != nil {
			e.failures++
			e.log.Error("freeze cgroup for unauthorized gpu use", "cgroup", key, "err", err)
			continue
		}
		e.parked[key] = f
		changed = true
	}
	for _, key := range p.Thaw {
		if err := e.parked[key].Thaw(); err != nil {
			e.log.Warn("thaw cgroup frozen for unauthorized gpu use", "cgroup", key, "err", err)
		}
		delete(e.parked, key)
		changed = true
	}
	if changed {
		e.record()
	}
	e.unauth.Frozen = len(e.parked)
}

// killUnauthorized kills a process if it is still where it was seen: the
// PID may have been reused since the sample, and a host process must never
// be killed for it.
func (e *Enforcer) killUnauthorized(u node.Unauthorized) {
	now, err := e.opts.Namespace.ForPID(e.opts.ProcRoot, u.PID)
	switch {
	case errors.Is(err, host.ErrConflict) && u.Container.Key() == "":
	case err == nil && now.Key() != "" && now.Key() == u.Container.Key():
	default:
		return
	}
	if err := e.watchdog.kill(u.PID); err != nil && !errors.Is(err, syscall.ESRCH) {
		e.log.Error("kill unauthorized gpu process", "pid", u.PID, "pod", u.Pod, "err", err)
		return
	}
	e.unauth.Killed++
	e.log.Warn("killed unauthorized gpu process", "namespace", u.Namespace, "pod", u.Pod, "container", u.ContainerName, "uuid", u.UUID, "pid", u.PID)
}

// UnauthorizedStats returns what was done about unauthorized GPU use, as of
// the last Apply.
func (e *Enforcer) UnauthorizedStats() UnauthorizedStats { return e.published.Load().unauth }
