package accuracy

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu/gpumodel"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// Cell is one scenario: greedy tenants with the given limits sharing one
// GPU under one policy, all running kernels of one duration with queues of
// one depth.
type Cell struct {
	Policy enforce.Policy
	Limits []float64
	Kernel time.Duration
	Queue  int
	// Demands, when set, are each tenant's demand (the share of the GPU
	// it would use alone); unset, every tenant is greedy.
	Demands []float64
}

// String is the cell's line prefix: policy, tenants, limits, kernel, queue.
func (c Cell) String() string {
	l := make([]string, len(c.Limits))
	for i, v := range c.Limits {
		l[i] = fmt.Sprint(math.Round(v * 100))
	}
	return fmt.Sprintf("policy=%s tenants=%d limits=%s kernel=%g queue=%d",
		c.Policy, len(c.Limits), strings.Join(l, "/"), float64(c.Kernel)/float64(time.Millisecond), c.Queue)
}

// Mutation is a deliberately broken controller or sensor; the gate must
// tell each from the real one.
type Mutation string

// The mutations the gate runs.
const (
	// Real is no mutation: the controller as shipped.
	Real Mutation = ""
	// OpenLoop sets each duty to the tenant's entitlement and never looks
	// at what it used.
	OpenLoop Mutation = "open-loop"
	// SensorHigh feeds the controller readings 25 % above the truth.
	SensorHigh Mutation = "sensor+25%"
	// SensorLagged feeds the controller readings 2 s old.
	SensorLagged Mutation = "sensor-lagged-2s"
)

// Mutations lists the broken variants, in the order the gate runs them.
var Mutations = []Mutation{OpenLoop, SensorHigh, SensorLagged}

// Options are the run's timing and the GPU's physics.
type Options struct {
	// Model is the GPU's physics.
	Model gpumodel.Config
	// SampleInterval is how often the agent samples and the controller
	// updates: the agent's default.
	SampleInterval time.Duration
	// Period is the throttle period: the agent's default.
	Period time.Duration
	// Settle is run before measuring; Measure is the span measured.
	Settle, Measure time.Duration
}

// DefaultOptions are the agent's defaults on the default model, settling
// 30 s and measuring 60 s of virtual time.
func DefaultOptions() Options {
	return Options{
		Model:          gpumodel.DefaultConfig(),
		SampleInterval: time.Second,
		Period:         enforce.DefaultOptions().Period,
		Settle:         30 * time.Second,
		Measure:        60 * time.Second,
	}
}

// Result is what each tenant got done, judged by kernels completed:
// under Strict its share of the measured span, under Burst its share of
// the work the GPU delivered.
type Result struct {
	// Shares are each tenant's share of the measured span, by completed
	// kernels; Targets what it was entitled to.
	Shares, Targets []float64
	// Delivered is the share of the measured span the GPU spent on the
	// tenants' kernels.
	Delivered float64
	// Plans are the tenants' throttle plans at the end.
	Plans []enforce.Plan
	// ErrorPP is the largest gap between a share and its target, in
	// percentage points.
	ErrorPP float64
}

// tenant is one container with one process on the GPU, and its throttle.
type tenant struct {
	pid        int
	member     enforce.Member
	throttled  bool          // a throttle runs, as the enforcer starts one at the first duty below 1
	plan       enforce.Plan  // as last set
	next       time.Duration // next throttle event
	readings   []reading
	doneBefore int64
}

type reading struct {
	at    time.Duration
	usage float64
}

// Run simulates one cell with the real controller (or a mutation of it)
// and judges it by the kernels each tenant completed.
func Run(c Cell, m Mutation, o Options) (Result, error) {
	if len(c.Limits) == 0 || c.Kernel <= 0 || c.Queue < 1 || len(c.Demands) > len(c.Limits) {
		return Result{}, errors.New("a cell needs limits, a kernel duration and a queue depth")
	}
	if o.SampleInterval <= 0 || o.Period <= 0 || o.Measure <= 0 {
		return Result{}, errors.New("sample interval, period and measured span must be positive")
	}
	gpu, err := gpumodel.New(o.Model)
	if err != nil {
		return Result{}, err
	}
	tenants, err := startTenants(gpu, c)
	if err != nil {
		return Result{}, err
	}
	simulate(gpu, tenants, m, o)
	return result(gpu, tenants, c, o), nil
}

// startTenants starts the cell's tenants on gpu, one process each, greedy
// unless the cell gives its demand.
func startTenants(gpu *gpumodel.GPU, c Cell) ([]*tenant, error) {
	tenants := make([]*tenant, len(c.Limits))
	for i, l := range c.Limits {
		t := &tenant{pid: 1000 + i, member: enforce.Member{Key: fmt.Sprintf("p%d", i), Limit: l, Policy: c.Policy}}
		demand := 1.0
		if i < len(c.Demands) {
			demand = c.Demands[i]
		}
		if err := gpu.Start(t.pid, gpumodel.Process{Kernel: c.Kernel, QueueDepth: c.Queue, Demand: demand}); err != nil {
			return nil, err
		}
		tenants[i] = t
	}
	return tenants, nil
}

// simulate runs the controller and the tenants' throttles on the GPU
// model through the settling and measured spans, event by event.
func simulate(gpu *gpumodel.GPU, tenants []*tenant, m Mutation, o Options) {
	ctrl := enforce.NewController(o.Period)
	var since uint64
	drive(gpu.Advance, gpu, tenants, o, func(at, dt time.Duration) {
		since = sample(gpu, ctrl, tenants, m, at, dt, since)
	})
}

// drive moves a model through the settling and measured spans, event by
// event: a throttle edge of a tenant on gpu, one of the agent's samples
// (sample, at time at, dt after the previous one; 0 for the first), the
// start of the measurement (each tenant's completed work noted), or the
// end. advance moves the whole model, gpu the engine the tenants run on.
func drive(advance func(time.Duration), gpu *gpumodel.GPU, tenants []*tenant, o Options, sample func(at, dt time.Duration)) {
	nextSample := o.SampleInterval
	end := o.Settle + o.Measure
	measuring := false
	for {
		at := min(nextSample, end)
		if !measuring {
			at = min(at, o.Settle)
		}
		for _, t := range tenants {
			if t.throttled {
				at = min(at, t.next)
			}
		}
		advance(at)
		if !measuring && at >= o.Settle {
			measuring = true
			for _, t := range tenants {
				t.doneBefore, _ = gpu.Completed(t.pid)
			}
		}
		if at >= end {
			return
		}
		for _, t := range tenants {
			if t.throttled && t.next <= at {
				edge(gpu, t, at)
			}
		}
		if at < nextSample {
			continue
		}
		dt := o.SampleInterval
		if nextSample == o.SampleInterval {
			dt = 0 // the enforcer's first snapshot has no previous one
		}
		nextSample += o.SampleInterval
		sample(at, dt)
	}
}

// sample is one of the agent's samples: NVML's averaged readings, the
// controller's plans, and the throttles following them at once.
func sample(gpu *gpumodel.GPU, ctrl *enforce.Controller, tenants []*tenant, m Mutation, at, dt time.Duration, since uint64) uint64 {
	sum := 0.0
	for _, t := range tenants {
		sum += t.member.Limit
	}
	var util map[int]float64
	util, since = nvml.AverageSamples(toNVML(gpu.ProcessUtilization(since)), since)
	members := make([]enforce.Member, len(tenants))
	for i, t := range tenants {
		t.readings = append(t.readings, reading{at: at, usage: util[t.pid]})
		t.member.Usage = sense(t, at, m)
		members[i] = t.member
	}
	plans := ctrl.Update(members, float64(gpu.Utilization())/100, dt)
	for _, t := range tenants {
		p := plans[t.member.Key]
		if m == OpenLoop {
			p.Duty = min(max(enforce.Entitlement(t.member, sum), enforce.MinDuty), 1)
		}
		t.plan = p
		if !t.throttled && p.Duty < 1 {
			t.throttled = true
		}
		if t.throttled {
			edge(gpu, t, at) // a new plan takes effect at once
		}
	}
	return since
}

// result judges the measured span. Strict: each tenant's work over the
// span, against its limit. Burst: each tenant's part of the work the GPU
// delivered, against its entitlement; what context switches cost belongs
// to no tenant.
func result(gpu *gpumodel.GPU, tenants []*tenant, c Cell, o Options) Result {
	sum := 0.0
	for _, l := range c.Limits {
		sum += l
	}
	r := Result{Shares: make([]float64, len(tenants)), Targets: make([]float64, len(tenants))}
	work, total := make([]float64, len(tenants)), 0.0
	for i, t := range tenants {
		done, _ := gpu.Completed(t.pid)
		work[i] = float64(done-t.doneBefore) * float64(c.Kernel)
		total += work[i]
	}
	for i, t := range tenants {
		r.Shares[i] = work[i] / float64(o.Measure)
		if c.Policy == enforce.Burst && total > 0 {
			r.Shares[i] = work[i] / total
		}
		r.Targets[i] = enforce.Entitlement(t.member, sum)
		r.Plans = append(r.Plans, t.plan)
		r.ErrorPP = max(r.ErrorPP, math.Abs(r.Shares[i]-r.Targets[i])*100)
	}
	r.Delivered = total / float64(o.Measure)
	return r
}

// edge is one throttle step at time at, as enforce.Throttle takes it:
// the plan in force says whether the container runs now and until when.
func edge(gpu *gpumodel.GPU, t *tenant, at time.Duration) {
	run, next := t.plan.At(at)
	gpu.SetFrozen(t.pid, !run)
	t.next = next
}

// sense is the reading the controller gets: the truth, or a mutation's.
func sense(t *tenant, at time.Duration, m Mutation) float64 {
	last := t.readings[len(t.readings)-1].usage
	switch m {
	case SensorHigh:
		return min(last*1.25, 1)
	case SensorLagged:
		for i := len(t.readings) - 1; i >= 0; i-- {
			if t.readings[i].at <= at-2*time.Second {
				return t.readings[i].usage
			}
		}
		return 0
	}
	return last
}

func toNVML(s []gpumodel.Sample) []nvml.UtilizationSample {
	out := make([]nvml.UtilizationSample, len(s))
	for i, v := range s {
		out[i] = nvml.UtilizationSample{PID: v.PID, TimeStamp: v.TimeStamp, SMUtil: v.SMUtil}
	}
	return out
}
