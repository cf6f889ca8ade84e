package nvml

import (
	"time"
)

// DefaultIgnoredXIDs are XIDs caused by an application rather than the GPU
// (illegal address, MMU fault from a bad kernel, preemptive cleanup, ...).
// They do not make a GPU unhealthy: one bad pod must not take its GPU away
// from every pod sharing it.
var DefaultIgnoredXIDs = []uint64{13, 31, 43, 45, 68, 109}

// DefaultFatalXIDs are XIDs after which a GPU is not usable until it is
// reset: uncorrectable (double-bit or uncontained) ECC errors, a failed
// page retirement or row remap, NVLink errors, the GPU fallen off the bus,
// and GSP firmware errors and timeouts. Pods on such a GPU cannot make
// progress: by default the DRA driver has their claims' pods evicted
// (NoExecute), so that their controllers place them again elsewhere.
var DefaultFatalXIDs = []uint64{48, 62, 64, 74, 79, 95, 119, 120, 140}

// healthTracker turns XID events and periodic probes into health changes.
// A GPU becomes unhealthy on a non-ignored XID or when a probe finds it
// lost. A lost GPU recovers on the first successful probe; a GPU with an XID
// recovers when probes succeed and no XID has arrived for the quiet period
// (never, when quiet is zero, which is the NVIDIA plugin's behaviour).
// It is pure: callers supply the time.
type healthTracker struct {
	quiet   time.Duration
	ignored map[uint64]bool
	gpus    map[string]*gpuHealth
}

type gpuHealth struct {
	Health
	lastXID time.Time
}

func newHealthTracker(uuids []string, quiet time.Duration, ignored []uint64) *healthTracker {
	t := &healthTracker{quiet: quiet, ignored: map[uint64]bool{}, gpus: map[string]*gpuHealth{}}
	for _, x := range ignored {
		t.ignored[x] = true
	}
	for _, u := range uuids {
		t.gpus[u] = &gpuHealth{Health: Health{UUID: u, Healthy: true}}
	}
	return t
}

// current returns every GPU's health, for the initial report.
func (t *healthTracker) current(order []string) []Health {
	out := make([]Health, 0, len(order))
	for _, u := range order {
		if g, ok := t.gpus[u]; ok {
			out = append(out, g.Health)
		}
	}
	return out
}

// xid records an XID on a GPU and returns the report it causes: every
// critical XID is reported, also on a GPU that is already unhealthy, so
// XIDs can be counted; only the first changes the GPU's health.
func (t *healthTracker) xid(uuid string, xid uint64, now time.Time) (Health, bool) {
	g, ok := t.gpus[uuid]
	if !ok || t.ignored[xid] {
		return Health{}, false
	}
	g.lastXID = now
	g.Health = Health{UUID: uuid, Healthy: false, Reason: ReasonXID, XID: xid}
	return g.Health, true
}

// instanceXID records an XID the driver put on one MIG instance of the
// GPU parent: the instance becomes unhealthy, and recovers as a GPU with
// an XID does, while its GPU answers probes.
func (t *healthTracker) instanceXID(uuid, parent string, xid uint64, now time.Time) (Health, bool) {
	if _, ok := t.gpus[parent]; !ok || t.ignored[xid] {
		return Health{}, false
	}
	g, ok := t.gpus[uuid]
	if !ok {
		g = &gpuHealth{}
		t.gpus[uuid] = g
	}
	g.lastXID = now
	g.Health = Health{UUID: uuid, Parent: parent, Healthy: false, Reason: ReasonXID, XID: xid}
	return g.Health, true
}

// probeInstances returns the recoveries of the MIG instances of a GPU
// that answered a probe: those whose last XID is the quiet period old.
func (t *healthTracker) probeInstances(parent string, now time.Time) []Health {
	var out []Health
	for uuid, g := range t.gpus {
		if g.Parent != parent || g.Healthy || t.quiet <= 0 || now.Sub(g.lastXID) < t.quiet {
			continue
		}
		g.Health = Health{UUID: uuid, Parent: parent, Healthy: true, Reason: ReasonRecovered}
		out = append(out, g.Health)
	}
	return out
}

// probe records whether a GPU answered a probe and returns the change it
// causes, if any.
func (t *healthTracker) probe(uuid string, lost bool, now time.Time) (Health, bool) {
	g, ok := t.gpus[uuid]
	if !ok {
		return Health{}, false
	}
	switch {
	case lost && g.Healthy:
		g.Health = Health{UUID: uuid, Healthy: false, Reason: ReasonLost}
		return g.Health, true
	case lost || g.Healthy:
		return Health{}, false
	case g.Reason == ReasonXID && (t.quiet <= 0 || now.Sub(g.lastXID) < t.quiet):
		return Health{}, false
	}
	g.Health = Health{UUID: uuid, Healthy: true, Reason: ReasonRecovered}
	return g.Health, true
}
