package gpumodel

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Config holds the physical parameters of the model. DefaultConfig says
// where each default comes from.
type Config struct {
	// TimeSlice is how long the GPU runs one context while another has
	// work queued before it switches.
	TimeSlice time.Duration
	// SwitchCost is the time a context switch takes, in which no kernel
	// runs.
	SwitchCost time.Duration
	// SamplePeriod is the period over which the driver samples
	// utilization, per process and for the device.
	SamplePeriod time.Duration
	// History is how many sample periods the driver keeps; older samples
	// are lost to a reader that polls too rarely.
	History int
	// NoisePP is the standard deviation, in percentage points, of noise
	// added to each per-process sample before it is truncated; 0 for none.
	NoisePP float64
	// Seed seeds the noise.
	Seed uint64
}

// DefaultConfig returns the model's defaults:
//   - TimeSlice 2 ms: the order of the compute time slice the driver uses
//     between contexts on recent data-centre GPUs (nvidia-smi
//     compute-policy offers shorter and longer settings).
//   - SwitchCost 50 µs: context switches with compute preemption are
//     reported in the tens of microseconds.
//   - SamplePeriod 1/6 s: NVML documents a sample period between 1/6 s and
//     1 s depending on the product; the shortest gives the reader the
//     least lag, the longest is a Config away.
//   - History 60 samples: 10 s at 1/6 s.
func DefaultConfig() Config {
	return Config{
		TimeSlice:    2 * time.Millisecond,
		SwitchCost:   50 * time.Microsecond,
		SamplePeriod: time.Second / 6,
		History:      60,
	}
}

// Validate checks the parameters describe a GPU.
func (c Config) Validate() error {
	switch {
	case c.TimeSlice <= 0:
		return errors.New("time slice must be positive")
	case c.SwitchCost < 0 || c.SwitchCost >= c.TimeSlice:
		return fmt.Errorf("switch cost %s must be in [0, time slice %s)", c.SwitchCost, c.TimeSlice)
	case c.SamplePeriod < time.Millisecond:
		return errors.New("sample period must be at least 1ms")
	case c.History < 1:
		return errors.New("history must hold at least one sample")
	case c.NoisePP < 0 || math.IsNaN(c.NoisePP):
		return errors.New("noise must be a non-negative number")
	}
	return nil
}

// Process describes a GPU process's work: kernels of one duration, at
// most QueueDepth of them submitted and not finished, and a host thread
// that keeps that queue full (Demand 1) or submits one kernel per
// Kernel/Demand of the time it runs.
type Process struct {
	// Kernel is how long one kernel runs on the GPU alone.
	Kernel time.Duration
	// QueueDepth is how many kernels may be submitted and unfinished; the
	// host blocks on a full queue, as a CUDA launch does.
	QueueDepth int
	// Demand is the share of the GPU the process would use alone, (0, 1].
	Demand float64
}

func (p Process) validate() error {
	switch {
	case p.Kernel <= 0:
		return errors.New("kernel duration must be positive")
	case p.QueueDepth < 1:
		return errors.New("queue depth must be at least 1")
	case !(p.Demand > 0 && p.Demand <= 1):
		return fmt.Errorf("demand %g is outside (0, 1]", p.Demand)
	}
	return nil
}

// Sample is one per-process utilization sample, as
// nvmlDeviceGetProcessUtilization returns it.
type Sample struct {
	// PID is the process.
	PID int
	// TimeStamp is the end of the sample period, in microseconds.
	TimeStamp uint64
	// SMUtil is the percent of the sample period its kernels ran,
	// truncated to an integer.
	SMUtil uint32
}

type proc struct {
	Process
	pid      int
	frozen   bool
	queued   int           // kernels submitted and unfinished, the running one included
	head     time.Duration // time left on the oldest queued kernel
	credit   float64       // kernels the host may submit, for Demand < 1
	done     int64         // kernels finished
	executed time.Duration // GPU time its kernels ran
	busy     time.Duration // GPU time in the current sample period
	exited   bool
}

// GPU is one simulated GPU. It is not safe for concurrent use; time only
// moves when Advance is called.
type GPU struct {
	cfg       Config
	rng       *rand.Rand
	now       time.Duration
	procs     []*proc // in submission order: round-robin order
	byPID     map[int]*proc
	cur       *proc
	sliceLeft time.Duration
	switching time.Duration
	binStart  time.Duration
	binBusy   time.Duration
	devUtil   uint32
	samples   [][]Sample // per finished sample period, oldest first
}

// New returns an idle GPU at time 0.
func New(cfg Config) (*GPU, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gpu model: %w", err)
	}
	// Seeded noise, so a run is reproducible; nothing secret.
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15)) //nolint:gosec // reproducible simulation noise
	return &GPU{cfg: cfg, rng: rng, byPID: map[int]*proc{}}, nil
}

// Now returns the model's time.
func (g *GPU) Now() time.Duration { return g.now }

// Start adds a process at the current time. Its queue fills at once if its
// demand is 1.
func (g *GPU) Start(pid int, p Process) error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	if _, ok := g.byPID[pid]; ok {
		return fmt.Errorf("process %d is already on the GPU", pid)
	}
	// A host launches its first kernel as it starts.
	pr := &proc{Process: p, pid: pid, head: p.Kernel, credit: 1}
	g.procs = append(g.procs, pr)
	g.byPID[pid] = pr
	g.refill(pr)
	return nil
}

// Exit removes a process: its queued kernels are dropped, as the driver
// tears down a context whose process died. What it completed stays
// readable.
func (g *GPU) Exit(pid int) {
	p, ok := g.byPID[pid]
	if !ok || p.exited {
		return
	}
	p.exited, p.queued, p.credit = true, 0, 0
	if g.cur == p {
		g.cur = nil
	}
}

// SetFrozen freezes or thaws a process's host side: a frozen process
// submits nothing, but kernels already queued keep running.
func (g *GPU) SetFrozen(pid int, frozen bool) {
	p, ok := g.byPID[pid]
	if !ok {
		return
	}
	p.frozen = frozen
	g.refill(p)
}

// Completed returns how many kernels a process finished and the GPU time
// its kernels ran: the work it got done, which no NVML reading feeds.
func (g *GPU) Completed(pid int) (kernels int64, executed time.Duration) {
	if p, ok := g.byPID[pid]; ok {
		return p.done, p.executed
	}
	return 0, 0
}

// Utilization returns the device utilization of the last finished sample
// period, in integer percent, as nvmlDeviceGetUtilizationRates does.
func (g *GPU) Utilization() uint32 { return g.devUtil }

// ProcessUtilization returns the per-process samples newer than since (in
// microseconds; 0 for every sample kept), oldest first, as
// nvmlDeviceGetProcessUtilization does. Only finished sample periods are
// reported, so a reading lags by up to one period.
func (g *GPU) ProcessUtilization(since uint64) []Sample {
	var out []Sample
	for _, bin := range g.samples {
		for _, s := range bin {
			if s.TimeStamp > since {
				out = append(out, s)
			}
		}
	}
	return out
}

// refill lets an unfrozen host submit what it may.
func (g *GPU) refill(p *proc) {
	if p.frozen || p.exited {
		return
	}
	if p.Demand >= 1 {
		p.queued = p.QueueDepth
		return
	}
	for p.credit >= 1 && p.queued < p.QueueDepth {
		p.credit--
		p.queued++
	}
}

// Advance runs the GPU until time to.
func (g *GPU) Advance(to time.Duration) {
	for g.now < to {
		step := min(to, g.binStart+g.cfg.SamplePeriod) - g.now
		if next := g.nextSubmission(); next > 0 {
			step = min(step, next)
		}
		step = g.run(step)
		g.accrue(step)
		g.now += step
		if g.now >= g.binStart+g.cfg.SamplePeriod {
			g.closeBin()
		}
	}
}

// nextSubmission is the time until a host with Demand < 1 next earns a
// kernel, 0 when none will.
func (g *GPU) nextSubmission() time.Duration {
	next := time.Duration(0)
	for _, p := range g.procs {
		if p.frozen || p.exited || p.Demand >= 1 || p.queued >= p.QueueDepth || p.credit >= 1 {
			continue
		}
		need := (1 - p.credit) * float64(p.Kernel) / p.Demand
		d := max(time.Duration(math.Ceil(need)), time.Nanosecond)
		if next == 0 || d < next {
			next = d
		}
	}
	return next
}

// accrue credits hosts with Demand < 1 for step of running time.
func (g *GPU) accrue(step time.Duration) {
	for _, p := range g.procs {
		if p.frozen || p.exited || p.Demand >= 1 {
			continue
		}
		// The host works between launches whether or not the queue has
		// room; a full queue only blocks its next launch.
		p.credit += float64(step) * p.Demand / float64(p.Kernel)
		p.credit = min(p.credit, 1+1e-9)
		g.refill(p)
	}
}

// run executes at most step of GPU time and returns how much passed.
func (g *GPU) run(step time.Duration) time.Duration {
	if g.switching > 0 {
		d := min(step, g.switching)
		g.switching -= d
		return d
	}
	if g.cur == nil || g.cur.queued == 0 || (g.sliceLeft <= 0 && g.other() != nil) {
		next := g.other()
		if g.cur != nil && g.cur.queued > 0 && next == nil {
			next = g.cur
		}
		if next == nil {
			return step // idle; the last context stays loaded
		}
		if next != g.cur {
			g.switching = g.cfg.SwitchCost
			g.cur = next
			g.sliceLeft = g.cfg.TimeSlice
			if g.switching > 0 {
				d := min(step, g.switching)
				g.switching -= d
				return d
			}
		}
		g.sliceLeft = g.cfg.TimeSlice
	}
	p := g.cur
	d := min(step, p.head, max(g.sliceLeft, 0))
	if d <= 0 {
		d = min(step, p.head)
	}
	p.head -= d
	p.executed += d
	p.busy += d
	g.binBusy += d
	g.sliceLeft -= d
	if p.head == 0 {
		p.done++
		p.queued--
		p.head = p.Kernel
		g.refill(p)
	}
	return d
}

// other returns the next process after the current one, round-robin, that
// has work queued, or nil.
func (g *GPU) other() *proc {
	start := 0
	for i, p := range g.procs {
		if p == g.cur {
			start = i + 1
			break
		}
	}
	for i := range g.procs {
		p := g.procs[(start+i)%len(g.procs)]
		if p != g.cur && p.queued > 0 {
			return p
		}
	}
	return nil
}

// closeBin finishes a sample period: one sample per live process and the
// device utilization, truncated to integer percent.
func (g *GPU) closeBin() {
	period := float64(g.cfg.SamplePeriod)
	stamp := uint64((g.binStart + g.cfg.SamplePeriod) / time.Microsecond)
	bin := make([]Sample, 0, len(g.procs))
	for _, p := range g.procs {
		if p.exited && p.busy == 0 {
			continue
		}
		pct := 100 * float64(p.busy) / period
		if g.cfg.NoisePP > 0 && p.busy > 0 {
			pct += g.rng.NormFloat64() * g.cfg.NoisePP
		}
		bin = append(bin, Sample{PID: p.pid, TimeStamp: stamp, SMUtil: uint32(min(max(pct, 0), 100))})
		p.busy = 0
	}
	g.devUtil = uint32(min(100*float64(g.binBusy)/period, 100))
	g.binBusy = 0
	g.binStart += g.cfg.SamplePeriod
	g.samples = append(g.samples, bin)
	if len(g.samples) > g.cfg.History {
		g.samples = g.samples[len(g.samples)-g.cfg.History:]
	}
}

// Busy returns the GPU time the device's SMs ran kernels since it
// started: the counter GPU performance monitoring (GPM) reads SM activity
// from, per MIG instance, with no process named.
func (g *GPU) Busy() time.Duration {
	var b time.Duration
	for _, p := range g.procs {
		b += p.executed
	}
	return b
}

// MIG is a GPU cut into MIG instances. Each instance has its own SMs and
// memory, so each is an engine of its own: it time-slices only its own
// contexts, and work on one never slows another. Time moves for all of
// them at once.
type MIG struct {
	instances []*GPU
}

// NewMIG returns a GPU in MIG mode with n idle instances, each with the
// physics cfg describes.
func NewMIG(cfg Config, n int) (*MIG, error) {
	if n < 1 {
		return nil, errors.New("a GPU in MIG mode needs at least one instance")
	}
	m := &MIG{}
	for i := range n {
		g, err := New(cfg)
		if err != nil {
			return nil, err
		}
		// Each instance's noise is its own.
		g.rng = rand.New(rand.NewPCG(cfg.Seed+uint64(i), 0x9e3779b97f4a7c15)) //nolint:gosec // reproducible simulation noise
		m.instances = append(m.instances, g)
	}
	return m, nil
}

// Instance returns instance i.
func (m *MIG) Instance(i int) *GPU { return m.instances[i] }

// Advance runs every instance until time to.
func (m *MIG) Advance(to time.Duration) {
	for _, g := range m.instances {
		g.Advance(to)
	}
}
