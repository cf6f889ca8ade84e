package accuracy

import (
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu/gpumodel"
	"github.com/gpuslice/gpuslice/pkg/enforce"
)

// The MIG mutations: the turns broken in the ways that would matter.
const (
	// MIGTimeSliced holds nothing: the containers sharing an instance run
	// at once and the GPU time-slices them, as before turns.
	MIGTimeSliced Mutation = "mig-time-sliced"
	// MIGBasePeriod lays the turns in the whole-GPU throttle period,
	// ignoring the shortest turn: work queued at a turn's end outlasts
	// short turns.
	MIGBasePeriod Mutation = "mig-base-period"
	// MIGOverlapping gives each container its share of every period from
	// the period's start, so the turns overlap.
	MIGOverlapping Mutation = "mig-overlapping"
)

// MIGMutations lists the broken turns, in the order the gate runs them.
var MIGMutations = []Mutation{MIGTimeSliced, MIGBasePeriod, MIGOverlapping}

// InMIGClaim reports whether a cell is within what the turns claim: the
// work a tenant keeps queued (queue depth × kernel) is at most a quarter
// of the shortest turn. Beyond it a tenant's queued work runs on into
// the next tenant's turn for a noticeable part of it.
func InMIGClaim(c Cell, turns enforce.Turns) bool {
	return time.Duration(c.Queue)*c.Kernel*4 <= turns.MinTurn
}

// RunMIG simulates one cell on a GPU in MIG mode: the cell's tenants
// share one instance (contexts time-sliced inside it) under the turns the
// agent plans for slices of a shared instance (or a mutation of them),
// while a greedy neighbour runs on a second instance. Each tenant is
// judged by the kernels it completed. The plans are made at every sample
// from the members alone, as the agent makes them; the tenants run free
// until the first sample sees them.
func RunMIG(c Cell, m Mutation, o Options) (Result, error) {
	if len(c.Limits) == 0 || c.Kernel <= 0 || c.Queue < 1 || len(c.Demands) > len(c.Limits) {
		return Result{}, errors.New("a cell needs limits, a kernel duration and a queue depth")
	}
	if o.SampleInterval <= 0 || o.Period <= 0 || o.Measure <= 0 {
		return Result{}, errors.New("sample interval, period and measured span must be positive")
	}
	gpu, err := gpumodel.NewMIG(o.Model, 2)
	if err != nil {
		return Result{}, err
	}
	inst := gpu.Instance(0)
	if err := gpu.Instance(1).Start(1, gpumodel.Process{Kernel: c.Kernel, QueueDepth: c.Queue, Demand: 1}); err != nil {
		return Result{}, err
	}
	tenants, err := startTenants(inst, c)
	if err != nil {
		return Result{}, err
	}
	members := make([]enforce.Member, len(tenants))
	for i, t := range tenants {
		members[i] = t.member
	}
	turns := migTurns(m, o)
	drive(gpu.Advance, inst, tenants, o, func(at, _ time.Duration) {
		plans := migPlans(turns, members, m)
		for _, t := range tenants {
			t.plan = plans[t.member.Key]
			t.throttled = t.throttled || t.plan.Duty < 1
			if t.throttled {
				edge(inst, t, at)
			}
		}
	})
	return migResult(inst, tenants, members, c, o), nil
}

// migResult judges the measured span as result does, against the turns'
// shares.
func migResult(inst *gpumodel.GPU, tenants []*tenant, members []enforce.Member, c Cell, o Options) Result {
	r := result(inst, tenants, c, o)
	r.Targets = r.Targets[:0]
	shares := enforce.Shares(members)
	r.ErrorPP = 0
	for i, t := range tenants {
		r.Targets = append(r.Targets, shares[t.member.Key])
		r.ErrorPP = max(r.ErrorPP, math.Abs(r.Shares[i]-r.Targets[i])*100)
	}
	return r
}

// migTurns are the turns the agent plans, or those of a mutation.
func migTurns(m Mutation, o Options) enforce.Turns {
	t := enforce.NewTurns(o.Period)
	if m == MIGBasePeriod {
		t.MinTurn = 0
	}
	return t
}

// migPlans are the turns' plans, or a mutation's.
func migPlans(turns enforce.Turns, members []enforce.Member, m Mutation) map[string]enforce.Plan {
	plans := turns.Plans(members)
	for k, p := range plans {
		switch m {
		case MIGTimeSliced:
			p = enforce.Plan{Duty: 1, Period: p.Period}
		case MIGOverlapping:
			p.Offset = 0
		}
		plans[k] = p
	}
	return plans
}

// GateMIG runs every cell on a shared MIG instance with the real turns,
// then with each mutation, and writes one line per cell and one per
// mutation:
//
//	accuracy mig policy=strict tenants=2 limits=30/70 kernel=1 queue=2 queued_ms=2 claim=true error_pp=0.02
//	mutation mig-time-sliced max_error_pp=20.00 detected=true
//
// Cells beyond the turns' claim (InMIGClaim) are run and written, with
// claim=false, but not held to MaxErrorPP. It reports whether every cell
// within the claim was within MaxErrorPP and every mutation was detected
// on them.
func GateMIG(w io.Writer, cells []Cell, o Options) (bool, error) {
	pass := true
	turns := enforce.NewTurns(o.Period)
	for _, c := range cells {
		r, err := RunMIG(c, Real, o)
		if err != nil {
			return false, fmt.Errorf("mig %s: %w", c, err)
		}
		claim := InMIGClaim(c, turns)
		fmt.Fprintf(w, "accuracy mig %s queued_ms=%g claim=%t error_pp=%.2f\n", c,
			float64(time.Duration(c.Queue)*c.Kernel)/float64(time.Millisecond), claim, r.ErrorPP)
		if claim && r.ErrorPP > MaxErrorPP {
			pass = false
		}
	}
	var claimed []Cell
	for _, c := range cells {
		if InMIGClaim(c, turns) {
			claimed = append(claimed, c)
		}
	}
	detected, err := mutationsDetected(w, claimed, MIGMutations, func(c Cell, m Mutation) (Result, error) { return RunMIG(c, m, o) })
	return pass && detected, err
}
