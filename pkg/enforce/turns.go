package enforce

import (
	"slices"
	"time"
)

// DefaultMinTurn is the shortest turn a container sharing a MIG instance
// gets in each period unless configured otherwise. Work a container
// queued before its turn ended runs on into the next container's turn;
// while that work is at most a quarter of the shortest turn, every turn
// holds within 2 percentage points of its share on the GPU model
// (make bench-accuracy, its mig cells).
const DefaultMinTurn = 200 * time.Millisecond

// Turns plans the compute of the containers sharing one device whose
// driver measures no process: slices of a MIG instance several containers
// hold. No reading can tell their use apart, so no feedback can steer
// them; instead each runs only in a turn of its own, laid end to end with
// the others' in every period and as long as its share of it, and is
// frozen for the rest. Two of them never run at once, so each gets its
// share by construction rather than by measurement.
//
// Strict containers' turns are their limits, whether or not they use
// them. Burst containers share what is left: their limits plus, in
// proportion to their limits, the slices no container with a process on
// the instance holds, so that together they fill the period. A container
// with no process on the instance is not a member: it cannot use the
// instance, is never frozen for it, and joins the turns at the first
// sample that sees its process there.
//
// Work a container queued before its turn ended keeps running after it,
// in the next turn; the period is made long enough that the shortest turn
// lasts MinTurn, up to MaxPeriod. Turns is pure and keeps no state: the
// plans follow from the members alone.
type Turns struct {
	// MinTurn is the shortest turn a member should get in each period.
	MinTurn time.Duration
	// BasePeriod is the shortest period; MaxPeriod the longest, which
	// bounds how long a member with a small share waits between turns.
	BasePeriod, MaxPeriod time.Duration
}

// NewTurns returns the turns the agent plans by default on a throttle
// period: turns of DefaultMinTurn at least, in periods of up to
// MaxPeriodFactor periods.
func NewTurns(period time.Duration) Turns {
	return Turns{MinTurn: DefaultMinTurn, BasePeriod: period, MaxPeriod: MaxPeriodFactor * period}
}

// Shares are the members' turns, as shares of each period: a Strict
// member's limit; Burst members the rest, in proportion to their limits.
// With no Burst member, the period's rest is idle.
func Shares(members []Member) map[string]float64 {
	out := make(map[string]float64, len(members))
	free, burst := 1.0, 0.0
	for _, m := range members {
		free -= m.Limit
		if m.Policy != Strict {
			burst += m.Limit
		}
	}
	for _, m := range members {
		out[m.Key] = m.Limit
		if m.Policy != Strict && burst > 0 {
			out[m.Key] += max(free, 0) * m.Limit / burst
		}
	}
	return out
}

// Plans returns every member's plan: its share of each period, at its own
// offset, in the order of the members' keys. A member whose share is the
// whole period (a Burst member alone) runs unthrottled.
func (t Turns) Plans(members []Member) map[string]Plan {
	shares := Shares(members)
	keys := make([]string, 0, len(members))
	shortest := 1.0
	for _, m := range members {
		keys = append(keys, m.Key)
		if s := shares[m.Key]; s > 0 {
			shortest = min(shortest, s)
		}
	}
	slices.Sort(keys)
	period := t.period(shortest)
	out := make(map[string]Plan, len(members))
	at := 0.0
	for _, k := range keys {
		s := min(max(shares[k], MinDuty), 1)
		if s >= 1 {
			out[k] = Plan{Duty: 1, Period: period}
			continue
		}
		out[k] = Plan{Duty: s, Period: period, Offset: min(at, 1-s)}
		at += s
	}
	return out
}

// period is the period in which a turn of share shortest lasts MinTurn,
// within BasePeriod and MaxPeriod.
func (t Turns) period(shortest float64) time.Duration {
	p := t.BasePeriod
	if shortest > 0 && t.MinTurn > 0 {
		p = max(p, time.Duration(float64(t.MinTurn)/shortest))
	}
	if t.MaxPeriod > 0 {
		p = min(p, max(t.MaxPeriod, t.BasePeriod))
	}
	return p
}
