package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// Options configure an Enforcer.
type Options struct {
	// CgroupRoot is where the cgroup filesystems are mounted.
	CgroupRoot string
	// ProcRoot is where the host's /proc is mounted.
	ProcRoot string
	// Namespace is the agent's cgroup namespace, in which the cgroup files
	// under ProcRoot are read; the zero value is the host's.
	Namespace host.Namespace
	// NamespaceErr is why the agent's cgroup namespace could not be placed
	// in the host's hierarchy; nil when it was (or needed not be). With it
	// set, the compute tier cannot engage on the node.
	NamespaceErr error
	// Compute turns the compute throttle on.
	Compute bool
	// MPS says MPS limits, set at Allocate, hold compute: the throttle is
	// off whatever Compute says (it would only fight them), and the compute
	// tier reads "mps".
	MPS bool
	// Memory is the memory watchdog's policy.
	Memory MemoryPolicy
	// DriverMemoryLimits asks for the driver's per-cgroup memory limits
	// where the driver and host have them (see NewDriverTier).
	DriverMemoryLimits bool
	// Policy is the compute policy for containers whose pod names none.
	Policy Policy
	// PodPolicy, if set, returns a pod's own compute policy (from its
	// gpuslice.io/compute-policy annotation), or "" to use Policy.
	PodPolicy func(namespace, pod string) Policy
	// PodPolicies is what a pod's own policy may do: PodPoliciesStricterOnly
	// by default.
	PodPolicies PodPolicyMode
	// Unauthorized is what is done to a process in a pod that uses a GPU
	// its container holds no slice of.
	Unauthorized UnauthorizedPolicy
	// UnauthorizedExempt are namespaces whose pods may use GPUs without
	// slices (monitoring such as DCGM); their use is still reported.
	UnauthorizedExempt []string
	// PodByUID, if set, names a pod on the node by its UID (from the API
	// server's list of the node's pods): the namespace of a process whose
	// runtime record is missing. A process whose namespace stays unknown
	// is never killed or frozen, only reported.
	PodByUID func(uid string) (namespace, name string, ok bool)
	// Period is the throttle period a GPU starts at; it grows when work
	// queued on the GPU outlasts the frozen part of each period.
	Period time.Duration
	// MinRun is the throttle period's length per throttled container: a
	// GPU with n throttled has a period of at least n×MinRun (up to the
	// sample interval). It bounds the freezer transitions a GPU costs to
	// 2/MinRun a second, however many containers are throttled on it. Zero
	// turns it off.
	MinRun time.Duration
	// MinTurn is the shortest turn a container sharing a MIG instance gets
	// in each period (see Turns); zero lays the turns in Period.
	MinTurn time.Duration
	// Clock times the throttles; nil is the wall clock.
	Clock Clock
	// State records throttled containers across restarts.
	State StateFile
	// Events records an Event on the pod for each action; nil records none.
	Events events.Recorder
	// Logger receives actions and failures.
	Logger *slog.Logger
}

// DefaultOptions returns the options the agent uses unless configured.
func DefaultOptions() Options {
	return Options{
		CgroupRoot:   contract.CgroupRoot,
		ProcRoot:     contract.ProcRoot,
		Compute:      true,
		Memory:       MemoryKill,
		Policy:       Burst,
		PodPolicies:  PodPoliciesStricterOnly,
		Unauthorized: UnauthorizedKill,
		Period:       100 * time.Millisecond,
		MinRun:       DefaultMinRun,
		MinTurn:      DefaultMinTurn,
		State:        StateFile{Path: contract.EnforcementState},
	}
}

// Enforcer applies the controller's duties to containers' cgroups after
// every sample. It is safe for concurrent use.
type Enforcer struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	ctrl      map[string]*Controller // by GPU UUID
	throttles map[string]*Throttle   // by container ID
	freezers  map[string]heldFreezer // by container ID
	stats     map[string]Stats       // by container ID
	// finished is the frozen time of throttles that ended, by container
	// ID, so a container's total never goes backwards.
	finished map[string]time.Duration
	// unreachable are containers whose cgroup could not be found, counted
	// and logged once rather than every sample.
	unreachable map[string]bool
	failures    uint64
	watchdog    *Watchdog
	driver      *DriverLimits
	node        NodeState // whether each tier can engage on the node
	last        time.Time // of the last snapshot applied
	epoch       time.Time // throttle periods count from it
	closed      bool      // Close ran: nothing is frozen again
	stale       bool      // a throttle stopped since the record was written
	// parked are cgroups frozen for unauthorized GPU use, by cgroup key;
	// reported are the PIDs already logged for it.
	parked map[string]Freezer
	// unthawed are cgroups whose throttle's last thaw failed, by control
	// file: kept in the record and thawed again every round until it
	// takes or the cgroup is gone.
	unthawed map[string]Freezer
	// raw bounds the throttles' raw freezer writes (GOMAXPROCS-1).
	raw *RawWrites
	// owner marks the agent's freezes as this process's (OwnerOf).
	owner    string
	reported map[int]bool
	unauth   UnauthorizedStats
	// heldAsPod are the pods held at their pod's level, by pod and GPU,
	// already reported.
	heldAsPod map[string]bool

	// published is what enforcement did as of its last Apply: scrapes
	// read it and never wait on e.mu, which Apply holds across kills,
	// /proc reads, NVML calls and file writes.
	published atomic.Pointer[view]
	gen       atomic.Uint64 // counts publishes
	// inbox holds the latest snapshot offered and not yet applied.
	inbox chan *node.Snapshot
}

// view is what enforcement did, as of one Apply.
type view struct {
	stats           map[string]Stats
	failures        uint64
	unauth          UnauthorizedStats
	compute, memory string
	node            NodeState
	driver          DriverStats
	hasDriver       bool
}

// heldFreezer is a container's freezer and the cgroup it was found for.
type heldFreezer struct {
	Freezer
	key string
}

// UseDriverLimits puts the driver's per-cgroup memory limits in front of
// the watchdog, which stays as a backstop for containers the driver could
// not limit.
func (e *Enforcer) UseDriverLimits(d *DriverLimits) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.driver = d
	e.publishLocked()
}

// publishLocked publishes what enforcement did for readers that must not
// wait: the exporter's scrapes.
func (e *Enforcer) publishLocked() {
	v := &view{stats: e.stats, failures: e.failures, unauth: e.unauth, node: e.node}
	v.compute, v.memory = e.tiersLocked()
	if e.driver != nil {
		v.driver, v.hasDriver = e.driver.Stats(), true
	}
	e.published.Store(v)
	e.gen.Add(1)
}

// Generation changes whenever what enforcement did is published anew, so
// a reader can tell that nothing changed since it last looked.
func (e *Enforcer) Generation() uint64 { return e.gen.Load() }

// Offer hands the enforcer the latest snapshot and returns at once: a
// snapshot still waiting is replaced (latest wins), so a slow enforcement
// round never holds up sampling.
func (e *Enforcer) Offer(snap *node.Snapshot) {
	for {
		select {
		case e.inbox <- snap:
			return
		default:
		}
		select {
		case <-e.inbox: // drop the stale one
		default:
		}
	}
}

// Run applies the snapshots offered until ctx ends: enforcement's own loop.
func (e *Enforcer) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case snap := <-e.inbox:
			e.Apply(snap)
		}
	}
}

// New thaws whatever a previous agent left frozen, then returns an
// enforcer. The thaw happens before anything else so that a crash loop
// cannot leave containers frozen.
func New(opts Options) (*Enforcer, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Period < 10*time.Millisecond {
		return nil, errors.New("throttle period must be at least 10ms")
	}
	if opts.MinRun < 0 || opts.MinRun > opts.Period*MaxPeriodFactor/2 {
		return nil, fmt.Errorf("throttle minimum run %s must be between 0 and half the longest period (%s)", opts.MinRun, opts.Period*MaxPeriodFactor/2)
	}
	if opts.Events == nil {
		opts.Events = events.Discard{}
	}
	if opts.MPS {
		opts.Compute = false
	}
	n, err := opts.State.ThawRecorded(opts.CgroupRoot, opts.Logger)
	if n > 0 {
		opts.Logger.Warn("thawed containers a previous agent left throttled", "count", n)
	}
	if err != nil {
		opts.Logger.Error("thaw recorded containers", "err", err)
	}
	// The record may be torn, missing or unwritten (a full disk): thaw
	// every pod and container cgroup that carries gpuslice's mark, and no
	// other.
	if n, err := ThawMarked(opts.CgroupRoot, opts.ProcRoot); n > 0 || err != nil {
		opts.Logger.Warn("thawed cgroups a previous agent froze, by their mark", "count", n, "err", err)
	}
	e := &Enforcer{
		opts: opts, log: opts.Logger, epoch: clockOf(opts).Now(), inbox: make(chan *node.Snapshot, 1),
		ctrl: map[string]*Controller{}, throttles: map[string]*Throttle{},
		freezers: map[string]heldFreezer{}, parked: map[string]Freezer{}, unthawed: map[string]Freezer{}, raw: NewRawWrites(runtime.GOMAXPROCS(0) - 1), reported: map[int]bool{}, heldAsPod: map[string]bool{}, stats: map[string]Stats{}, finished: map[string]time.Duration{}, unreachable: map[string]bool{},
		watchdog: NewWatchdog(opts.Memory, opts.ProcRoot, opts.Logger, opts.Events),
	}
	// Read from the agent's own /proc, where os.Getpid() names it whatever
	// its PID namespace: through --proc-root without hostPID the same
	// number would name another process, whose freezes would then look
	// alive and never be thawed. Without it a freeze is marked as anyone's
	// to thaw at start.
	e.owner, _ = OwnerOf("/proc", os.Getpid())
	e.watchdog.ns = opts.Namespace
	e.watchdog.cgroupRoot = opts.CgroupRoot
	e.node = CheckNode(opts, opts.NamespaceErr)
	e.publishLocked() // nothing else can hold it yet
	return e, nil
}

func clockOf(o Options) Clock {
	if o.Clock == nil {
		return SystemClock{}
	}
	return o.Clock
}

// Apply runs the controller on a snapshot and sets every container's duty.
// Containers spanning GPUs take the smallest duty of their GPUs, since one
// freezer holds all of them. A container whose GPU could not be read in
// this sample keeps the duty it had: a blind agent lets nothing go.
//
// The throttle's part is a plan and its acting out: readRound and
// planDuties decide from the snapshot alone (and the controllers' state);
// resolveFreezers, act and forgetGone touch cgroups and throttles.
func (e *Enforcer) Apply(snap *node.Snapshot) {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer e.publishLocked()
	if e.closed {
		return
	}
	dt := time.Duration(0)
	if !e.last.IsZero() && snap.Time.After(e.last) {
		dt = snap.Time.Sub(e.last)
	}
	e.last = snap.Time
	e.carryOut(snap, e.decide(snap, dt))
}

// Decisions is everything one enforcement round decided from a snapshot,
// before anything was done: the driver tier's limits, what the watchdog
// does to each container on each GPU, what is done about unauthorized
// use, and each container's compute duty. Each part is decided by a
// function table-tested without processes (PlanDriverLimits, PlanMemory,
// PlanUnauthorized, planDuties); carrying it out re-checks every PID
// before a signal.
type Decisions struct {
	Driver       []DriverLimit
	Memory       map[MemoryKey]MemoryPlan
	Unauthorized UnauthorizedPlan
	// Compute are the duties by cgroup key; round is what they were
	// planned from.
	Compute map[string]Plan
	round   *round
}

// decide reads the snapshot against what enforcement holds and plans the
// round. For the throttle it also resolves each container's freezer
// (which cgroups can be held decides who shares a GPU's plan).
func (e *Enforcer) decide(snap *node.Snapshot, dt time.Duration) Decisions {
	var d Decisions
	if e.driver != nil {
		d.Driver = PlanDriverLimits(snap, e.driver.Root())
	}
	d.Memory = e.watchdog.Plan(snap)
	uses := make([]node.Unauthorized, len(snap.Unauthorized))
	for i, u := range snap.Unauthorized {
		uses[i] = e.named(u)
	}
	parked := make(map[string]bool, len(e.parked))
	for key := range e.parked {
		parked[key] = true
	}
	d.Unauthorized = PlanUnauthorized(uses, e.opts.Unauthorized, e.opts.UnauthorizedExempt, e.reported, parked)
	if !e.opts.Compute {
		return d
	}
	r := readRound(snap, e.policyOf)
	e.resolveFreezers(r)
	for uuid := range r.byUUID {
		if e.ctrl[uuid] == nil {
			e.ctrl[uuid] = NewController(e.opts.Period)
			e.ctrl[uuid].MinRun = e.opts.MinRun
		}
	}
	turns := NewTurns(e.opts.Period)
	turns.MinTurn = e.opts.MinTurn
	d.Compute, d.round = planDuties(e.ctrl, turns, r, dt), &r
	return d
}

// carryOut acts on one round's decisions.
func (e *Enforcer) carryOut(snap *node.Snapshot, d Decisions) {
	if e.driver != nil {
		e.driver.Act(d.Driver)
	}
	e.watchdog.Act(snap, d.Memory)
	e.actUnauthorized(d.Unauthorized)
	e.reportUnknown(snap)
	e.thawAgain()
	if d.round == nil {
		e.stats = e.memoryOnlyStats(snap)
		return
	}
	e.act(d.Compute, *d.round)
	e.forgetGone(d.round.seen)
	if e.stale {
		e.record()
	}
	e.stats = e.collectStats(d.round.seen)
}

// reportUnknown logs and records an Event, once, for each pod held at its
// pod's level because a process of it could not be placed in one of its
// containers.
func (e *Enforcer) reportUnknown(snap *node.Snapshot) {
	now := map[string]bool{}
	for _, g := range snap.Groups {
		k := g.PodUID + "/" + g.UUID
		now[k] = true
		if e.heldAsPod[k] || g.Blind {
			continue
		}
		e.log.Warn("gpu use of a pod cannot be told per container; holding the pod at its pod's level",
			"namespace", g.Namespace, "pod", g.Pod, "uuid", g.UUID, "reason", g.Unknown)
		e.opts.Events.Warning(events.Pod{Namespace: g.Namespace, Name: g.Pod, UID: g.PodUID}, "GPUUseUnattributable",
			fmt.Sprintf("A process of this pod on GPU %d cannot be placed in one of its containers (%s). Its containers on the GPU are held together to the %.0f%% compute and %d MiB they hold, at the pod's level, and their use reads unknown.",
				g.Index, g.Unknown, g.ComputeLimitRatio*100, g.MemoryLimitBytes>>20))
	}
	for k := range e.heldAsPod {
		if !now[k] {
			delete(e.heldAsPod, k)
		}
	}
	for k := range now {
		e.heldAsPod[k] = true
	}
}

// Close stops every throttle, thawing every container, and clears the
// record. Samples applied after it change nothing.
func (e *Enforcer) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer e.publishLocked()
	e.closed = true
	for id := range e.throttles {
		e.stop(id)
	}
	for key, f := range e.parked {
		if err := f.Thaw(); err != nil {
			e.log.Warn("thaw cgroup frozen for unauthorized gpu use", "cgroup", key, "err", err)
		}
		delete(e.parked, key)
	}
	e.thawAgain() // what still fails stays recorded for the next agent
	e.record()
}
