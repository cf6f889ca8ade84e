package enforce

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// round is what one snapshot says to the throttle.
type round struct {
	// seen are the containers with a cgroup, by container ID; hold, those
	// on a GPU that could not be read (they keep their duty).
	seen map[string]node.Container
	hold map[string]bool
	// byUUID are the controllers' members, by GPU UUID; util, each read
	// GPU's utilization.
	byUUID map[string][]Member
	util   map[string]float64
	// turns are the devices whose members' use cannot be measured (slices
	// of a MIG instance): they take turns rather than follow a controller.
	turns map[string]bool
}

// readRound reads a snapshot for the throttle; policyOf gives a container's
// compute policy.
func readRound(snap *node.Snapshot, policyOf func(c node.Container) Policy) round {
	r := round{seen: map[string]node.Container{}, hold: map[string]bool{}, byUUID: map[string][]Member{}, util: map[string]float64{}, turns: map[string]bool{}}
	for _, d := range snap.Devices {
		if d.SampleOK {
			r.util[d.UUID] = d.Sample.Utilization
		}
	}
	for _, c := range snap.Enforced() {
		id := c.Cgroup.Key()
		if id == "" {
			continue // no process seen yet: nothing to throttle
		}
		r.seen[id] = c
		if c.Blind {
			r.hold[id] = true
			continue
		}
		r.byUUID[c.UUID] = append(r.byUUID[c.UUID], Member{Key: id, Limit: c.ComputeLimitRatio, Policy: policyOf(c), Usage: c.SMUtilization})
		if c.ComputeUnmeasured {
			r.turns[c.UUID] = true
		}
	}
	return r
}

// planDuties runs each GPU's controller, or the turns of a device whose
// members' use cannot be measured, and returns each container's plan: the
// smallest duty over its GPUs. Containers on a blind GPU get none.
func planDuties(ctrl map[string]*Controller, turns Turns, r round, dt time.Duration) map[string]Plan {
	plans := map[string]Plan{}
	for uuid, members := range r.byUUID {
		var ps map[string]Plan
		if r.turns[uuid] {
			ps = turns.Plans(members)
		} else {
			ps = ctrl[uuid].Update(members, r.util[uuid], dt)
		}
		for k, p := range ps {
			if cur, ok := plans[k]; !ok || p.Duty < cur.Duty {
				plans[k] = p
			}
		}
	}
	for id := range r.hold {
		delete(plans, id) // one of its GPUs is blind: keep the duty it has
	}
	return plans
}

func (e *Enforcer) policyOf(c node.Container) Policy {
	var pod Policy
	if e.opts.PodPolicy != nil {
		pod = e.opts.PodPolicy(c.Namespace, c.Pod)
	}
	return e.opts.PodPolicies.Effective(e.opts.Policy, pod)
}

// resolveFreezers finds each seen container's freezer, once per cgroup
// path, and drops from the round the containers that have none.
func (e *Enforcer) resolveFreezers(r round) {
	for id, c := range r.seen {
		if f, ok := e.freezers[id]; ok && f.key == freezerKey(c.Cgroup) {
			continue
		}
		f, err := FreezerFor(e.opts.CgroupRoot, c.Cgroup)
		if err != nil {
			if !e.unreachable[id] {
				e.unreachable[id] = true
				e.failures++
				reason := e.computeReason(c.Cgroup, false)
				e.log.Warn("cannot enforce compute share", "namespace", c.Namespace, "pod", c.Pod, "container", c.Container, "reason", reason, "err", err)
				e.opts.Events.Warning(events.Pod{Namespace: c.Namespace, Name: c.Pod, UID: c.PodUID}, "GPUComputeShareUnenforced",
					fmt.Sprintf("The %.0f%% compute share of container %s on GPU %d cannot be enforced (%s): %s. Its GPU use is still measured and reported.",
						c.ComputeLimitRatio*100, c.Container, c.Index, reason, unreachableDetail(c.Cgroup, err)))
			}
			delete(r.hold, id)
			for uuid, ms := range r.byUUID {
				r.byUUID[uuid] = slices.DeleteFunc(ms, func(m Member) bool { return m.Key == id })
				if len(r.byUUID[uuid]) == 0 {
					delete(r.byUUID, uuid)
				}
			}
			continue
		}
		if _, ok := e.freezers[id]; ok {
			// The same container is now seen in other cgroup paths: the
			// old throttle holds the wrong file.
			e.stop(id)
		}
		delete(e.unreachable, id)
		f.Raw, f.Owner = e.raw, e.owner
		e.freezers[id] = heldFreezer{Freezer: f, key: freezerKey(c.Cgroup)}
	}
}

// act starts, changes and ends throttles to follow the plans. The record
// of throttled cgroups is written once, before any new throttle freezes:
// a crash never leaves a frozen cgroup the record does not name.
func (e *Enforcer) act(plans map[string]Plan, r round) {
	var start []string
	for id, p := range plans {
		t := e.throttles[id]
		switch {
		case t == nil && p.Duty < 1:
			start = append(start, id)
		case t != nil && t.Err() != nil:
			// The cgroup went away mid-throttle; the throttle thawed what
			// it could and stopped. Forget the freezer: if the container is
			// really still there, its cgroup is found again next sample.
			e.failures++
			e.stop(id)
			delete(e.freezers, id)
		case t != nil:
			t.SetPlan(p)
		}
	}
	if len(start) == 0 {
		return
	}
	e.record(start...)
	for _, id := range start {
		p, c := plans[id], r.seen[id]
		e.throttles[id] = StartThrottle(e.freezers[id].Freezer, p, e.epoch, e.opts.Clock)
		e.log.Info("throttling container", "namespace", c.Namespace, "pod", c.Pod, "container", c.Container, "cgroup", id, "duty", p.Duty, "turns", r.turns[c.UUID])
		pod := events.Pod{Namespace: c.Namespace, Name: c.Pod, UID: c.PodUID}
		if r.turns[c.UUID] {
			e.opts.Events.Normal(pod, "GPUComputeTurns",
				fmt.Sprintf("Container %s shares MIG instance %s (GPU %d) with other containers, whose use the driver cannot tell apart; it runs in a turn of its own, %.0f%% of each %s period, for its %.0f%% share.",
					c.Container, c.UUID, c.Index, p.Duty*100, p.Period, c.ComputeLimitRatio*100))
			continue
		}
		e.opts.Events.Normal(pod, "GPUComputeThrottled",
			fmt.Sprintf("Container %s uses more GPU compute than its %.0f%% share of GPU %d; it runs %.0f%% of each %s period until it is back within it.",
				c.Container, c.ComputeLimitRatio*100, c.Index, p.Duty*100, p.Period))
	}
}

// forgetGone stops the throttles of containers gone from the snapshot,
// thawing them, and forgets them.
func (e *Enforcer) forgetGone(seen map[string]node.Container) {
	for id := range e.throttles {
		if _, ok := seen[id]; !ok {
			e.stop(id)
		}
	}
	for id := range e.freezers {
		if _, ok := seen[id]; !ok {
			delete(e.freezers, id)
			delete(e.finished, id)
			for _, c := range e.ctrl {
				c.Forget(id)
			}
		}
	}
	for id := range e.unreachable {
		if _, ok := seen[id]; !ok {
			delete(e.unreachable, id)
		}
	}
}

// freezerKey names the cgroup a container's freezer must hold.
func freezerKey(c node.Cgroup) string {
	return c.Key() + "|" + c.Paths[""] + "|" + c.Paths["freezer"]
}

// stop ends a container's throttle, thawing it; the record is rewritten
// at the end of the round (a stale entry only thaws a cgroup that is not
// frozen).
func (e *Enforcer) stop(id string) {
	if t := e.throttles[id]; t != nil {
		t.Stop()
		e.finished[id] += t.Throttled()
		delete(e.throttles, id)
		e.stale = true
		if err := t.ThawErr(); err != nil {
			// Never dropped from the record while it may be frozen.
			f := e.freezers[id].Freezer
			e.unthawed[f.File] = f
			e.failures++
			e.log.Error("thaw after a throttle failed; retried every round and kept in the record", "container", id, "err", err)
		}
	}
}

// thawAgain thaws the cgroups whose last thaw failed; each leaves the
// record once thawed or gone.
func (e *Enforcer) thawAgain() {
	for file, f := range e.unthawed {
		if err := f.Thaw(); err != nil && !errors.Is(err, os.ErrNotExist) {
			continue
		}
		delete(e.unthawed, file)
		e.stale = true
	}
}

// record writes the freezer files of every throttled or parked cgroup,
// and of the containers about to be throttled.
func (e *Enforcer) record(starting ...string) {
	e.stale = false
	files := make([]string, 0, len(e.throttles)+len(e.parked)+len(starting))
	for id := range e.throttles {
		files = append(files, e.freezers[id].File)
	}
	for _, id := range starting {
		files = append(files, e.freezers[id].File)
	}
	for _, f := range e.parked {
		files = append(files, f.File)
	}
	for file := range e.unthawed {
		files = append(files, file)
	}
	if err := e.opts.State.Write(files); err != nil {
		e.failures++
		e.log.Error("record throttled containers", "err", err)
	}
}
