package enforce

import (
	"errors"
	"fmt"
	"slices"
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

// unauthorized acts on the processes in pods that use a GPU their
// container holds no slice of, by the Unauthorized policy. Host processes
// never reach here: the sampler lists only processes in pod cgroups.
func (e *Enforcer) unauthorized(snap *node.Snapshot) {
	wantParked := map[string]node.Cgroup{}
	seen := map[int]bool{}
	for _, u := range snap.Unauthorized {
		seen[u.PID] = true
		u = e.named(u)
		action := e.opts.Unauthorized
		switch {
		case u.Namespace == "":
			// Exemption is by namespace: one that is not known may be
			// exempt, and a process is never ended on a guess.
			action = UnauthorizedLog
			u.Reason += "; its namespace is unknown, so it is only reported"
		case slices.Contains(e.opts.UnauthorizedExempt, u.Namespace):
			action = UnauthorizedLog
		}
		if !e.reported[u.PID] {
			e.reported[u.PID] = true
			e.log.Warn("unauthorized gpu use", "namespace", u.Namespace, "pod", u.Pod, "container", u.ContainerName, "pod_uid", u.PodUID,
				"uuid", u.UUID, "pid", u.PID, "reason", u.Reason, "action", string(action))
			if u.Pod != "" {
				e.opts.Events.Warning(events.Pod{Namespace: u.Namespace, Name: u.Pod, UID: u.PodUID}, "GPUUseUnauthorized",
					fmt.Sprintf("Process %d uses GPU %s without holding a slice of it (%s); action: %s.", u.PID, u.UUID, u.Reason, action))
			}
		}
		switch {
		case action == UnauthorizedLog:
		case action == UnauthorizedFreeze && u.Container.Key() != "":
			wantParked[u.Container.Key()] = u.Container
		default:
			// Kill, and freeze of a process no one cgroup holds (its
			// cgroup lines name two containers).
			e.killUnauthorized(u)
		}
	}
	for pid := range e.reported {
		if !seen[pid] {
			delete(e.reported, pid)
		}
	}
	changed := false
	for key, c := range wantParked {
		if f, ok := e.parked[key]; ok {
			// Frozen again every sample: whatever thawed it meanwhile.
			_ = f.Freeze()
			continue
		}
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
	for key, f := range e.parked {
		if _, ok := wantParked[key]; ok {
			continue
		}
		if err := f.Thaw(); err != nil {
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
