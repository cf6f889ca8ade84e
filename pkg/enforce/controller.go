package enforce

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Policy is how strictly a container is held to its compute share.
type Policy string

const (
	// Burst holds a container to its share only while others on the GPU
	// want the time; otherwise it may use idle GPU time. Default.
	Burst Policy = "burst"
	// Strict holds a container to its share always.
	Strict Policy = "strict"
)

// ParsePolicy accepts "burst" and "strict"; empty is Burst.
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case "", Burst:
		return Burst, nil
	case Strict:
		return Strict, nil
	}
	return "", fmt.Errorf("unknown compute policy %q (want burst or strict)", s)
}

// MinDuty is the smallest share of each period a throttled container may
// run: never frozen outright, so it keeps making some progress.
const MinDuty = 0.02

// Member is one container on one GPU, as the controller sees it.
type Member struct {
	// Key names the container on this GPU.
	Key string
	// Limit is its compute share, 0..1.
	Limit float64
	// Policy is Strict or Burst.
	Policy Policy
	// Usage is its measured SM utilization over the last window, 0..1.
	Usage float64
}

// StrictWindow is the span over which a Strict container's use may not
// exceed its limit: switching work on and off around the sample interval
// gains nothing over it.
const StrictWindow = 10 * time.Second

// MaxPeriodFactor bounds how far a GPU's throttle period may grow over the
// configured one when work queued on the GPU outlasts the frozen part of
// each period.
const MaxPeriodFactor = 40

// DefaultMinRun is the period's length per throttled container unless
// configured otherwise. Each run costs two freezer transitions, so a
// GPU's throttles cost at most 2/MinRun transitions a second however many
// containers share it.
const DefaultMinRun = 20 * time.Millisecond

// Plan is a container's place in its GPU's throttle schedule: in every
// Period it runs from Offset×Period for Duty×Period (wrapping around the
// period's end) and is frozen for the rest. The containers throttled on one
// GPU get consecutive runs, so that they take turns on the GPU rather than
// time-slicing it, and periods are counted from one epoch the enforcer
// shares between its throttles.
type Plan struct {
	// Duty is the share of each period the container runs, MinDuty..1.
	Duty float64
	// Period is the GPU's throttle period.
	Period time.Duration
	// Offset is where in the period its run starts, 0..1 of the period.
	Offset float64
}

// At says, for a plan and a time since the epoch, whether the container
// runs at that time and when (since the epoch) that next changes. A duty
// of 1 runs always and is looked at again a period later.
func (p Plan) At(since time.Duration) (run bool, next time.Duration) {
	if p.Period <= 0 {
		return true, since + time.Second
	}
	if p.Duty >= 1 {
		return true, since + p.Period
	}
	start := time.Duration(p.Offset * float64(p.Period))
	runFor, _ := Cycle(p.Period, p.Duty)
	// Where since falls in the cycle that starts at the run's start.
	pos := (since - start) % p.Period
	if pos < 0 {
		pos += p.Period
	}
	if pos < runFor {
		return true, since + runFor - pos
	}
	return false, since + p.Period - pos
}

// Controller decides, per GPU, the throttle plan of each container. It is
// pure: callers feed it the measurements of each window and apply the
// plans it returns.
type Controller struct {
	// Gain is how far each decision moves a duty toward its estimate, 0..1.
	Gain float64
	// Saturation is the device utilization above which the GPU counts as
	// contended for Burst containers.
	Saturation float64
	// Window is the span a Strict container's use is held to its limit
	// over.
	Window time.Duration
	// BasePeriod is the throttle period the GPU starts at; MaxPeriod the
	// longest it may grow to.
	BasePeriod, MaxPeriod time.Duration
	// MinRun is the period's length per throttled container: with n
	// throttled, the period is at least n×MinRun (up to the window), so
	// the runs laid end to end in it cost at most 2/MinRun freezer
	// transitions a second, and an even share runs for MinRun at least.
	// Zero leaves the period alone.
	MinRun time.Duration

	period   time.Duration // grown while queued work outlasts the frozen part
	planned  time.Duration // the period in the plans last returned
	dt       time.Duration // the last window's length
	duty     map[string]float64
	used     map[string][]span // Strict containers' recent use, oldest first
	pending  map[string][]span // readings since the last decision
	gathered time.Duration     // span of the readings since the last decision
	decided  bool              // a decision was made
}

// span is one measurement window: its length and the GPU time used in it.
type span struct {
	dt, used float64 // seconds
}

// NewController returns a controller with every duty at 1 and the given
// base throttle period.
func NewController(period time.Duration) *Controller {
	return &Controller{
		Gain: 0.5, Saturation: 0.95, Window: StrictWindow,
		BasePeriod: period, MaxPeriod: MaxPeriodFactor * period, MinRun: DefaultMinRun,
		period: period, planned: period,
		duty: map[string]float64{}, used: map[string][]span{}, pending: map[string][]span{},
	}
}

// Duty returns a container's current duty; 1 for one never throttled.
func (c *Controller) Duty(key string) float64 {
	if d, ok := c.duty[key]; ok {
		return d
	}
	return 1
}

// Period returns the GPU's current throttle period.
func (c *Controller) Period() time.Duration { return c.planned }

// Entitlement is the share a container may hold on a contended GPU: its
// limit under Strict; under Burst its limit plus its part, in proportion to
// limits, of the share no container holds slices for, so that greedy Burst
// containers together fill the GPU.
func Entitlement(m Member, sumLimits float64) float64 {
	if m.Policy == Strict || sumLimits <= 0 {
		return m.Limit
	}
	return m.Limit + max(0, 1-sumLimits)*m.Limit/sumLimits
}

// Update takes one window's measurements for the containers on one GPU
// (dt long) and the GPU's utilization, and returns every member's plan.
//
// A container that ran at duty d and used u would use about u/d at full
// duty; to use its entitlement E it should run at E*d/u. Duties move
// toward that estimate by Gain at each decision, which settles over a few
// decisions without oscillating on the noise of one. A decision is taken
// once the readings gathered since the last one cover a whole throttle
// period (every window while the period is shorter than a window), so it
// judges whole periods at the duty last set, not a fragment of one.
// Strict containers are always steered to their limit. Burst containers
// are steered to their entitlement only while the GPU is contended:
// saturated, with some container not over its entitlement (which stays
// true once every container sits at its entitlement, so the controller does
// not release and re-throttle around the target); otherwise their duty
// returns to 1 and they use idle GPU time.
//
// Work a frozen process queued before it was frozen keeps running, so a
// container uses more than its duty. Feedback absorbs that while the duty
// can still go lower; when a container is held at MinDuty and still uses
// more than its entitlement, its queued work outlasts the frozen part of
// the period, and the GPU's period doubles (up to MaxPeriod), so that the
// queue drains within each frozen part.
//
// Strict is strict over time, not per sample. A Strict container starts
// at its limit, not at 1; an idle window holds its duty where it was
// rather than raising it (idleness teaches nothing and earns no credit);
// and every window its duty is capped so that its use over the last
// Window, plus a full next window at that duty, stays within limit ×
// Window. A workload that switches on and off around the sample interval
// therefore gets no more than its limit over any Window.
func (c *Controller) Update(members []Member, deviceUtilization float64, dt time.Duration) map[string]Plan {
	sumLimits := 0.0
	fresh := false
	c.dt = dt
	for _, m := range members {
		sumLimits += m.Limit
		c.pending[m.Key] = append(c.pending[m.Key], span{dt: dt.Seconds(), used: m.Usage * dt.Seconds()})
		if m.Policy == Strict {
			c.used[m.Key] = append(c.used[m.Key], span{dt: dt.Seconds(), used: m.Usage * dt.Seconds()})
		} else {
			delete(c.used, m.Key)
		}
		if _, ok := c.duty[m.Key]; !ok {
			fresh = true
		}
	}
	c.gathered += dt
	if !fresh && c.decided && c.gathered < c.planned && dt > 0 {
		return c.plans(members) // the readings do not yet cover a period
	}
	next := max(c.planned, dt).Seconds() // until the next decision
	usage := make(map[string]float64, len(members))
	for _, m := range members {
		usage[m.Key] = m.Usage
		if u, ok := mean(c.pending[m.Key]); ok {
			usage[m.Key] = u
		}
	}
	contended := deviceUtilization >= c.Saturation
	want := c.targets(members, usage, sumLimits)
	grow := false
	steered, sum := []string{}, 0.0
	for _, m := range members {
		d, over := c.step(m, usage[m.Key], want[m.Key], contended, next)
		grow = grow || over
		if (m.Policy == Strict || contended) && d < 1 {
			steered = append(steered, m.Key)
			sum += d
		}
		c.duty[m.Key] = d
	}
	// Runs laid end to end cannot add up to more than the period: when
	// they would on a saturated GPU, every throttled container gives up the
	// same fraction, so none is starved by the order of the runs.
	if sum > 1 && deviceUtilization >= c.Saturation {
		for _, k := range steered {
			c.duty[k] = max(c.duty[k]/sum, MinDuty)
		}
	}
	c.decided, c.gathered = true, 0
	for k := range c.pending {
		delete(c.pending, k)
	}
	if grow {
		c.period = longerPeriod(c.period, dt, c.MaxPeriod)
	}
	return c.plans(members)
}

// step moves a member's duty toward what would have it use want, having
// used u at its last duty. over is true when it is held as low as it goes
// and still uses more than want.
func (c *Controller) step(m Member, u, want float64, contended bool, next float64) (d float64, over bool) {
	prev, seen := c.duty[m.Key]
	if !seen {
		prev = 1
		if m.Policy == Strict {
			prev = min(max(m.Limit, MinDuty), 1)
		}
	}
	target := 1.0
	switch {
	case (m.Policy == Strict || contended) && u > 0:
		target = want * prev / u
	case m.Policy == Strict && seen:
		target = prev // idle: hold
	}
	target = min(max(target, MinDuty), 1)
	over = target == MinDuty && prev <= MinDuty*1.05 && u > want+0.005
	d = prev + c.Gain*(target-prev)
	if target == 1 && d > 0.98 {
		d = 1
	}
	if m.Policy == Strict {
		d = c.windowCap(m, d, next)
	}
	return d, over
}

// targets is the use each member is steered to: a Strict member's limit;
// for Burst members, what the GPU delivers beyond the Strict members' use,
// filled like water: a member that wants less than its part (in
// proportion to limits) gets what it wants, and the rest is split among the
// others in proportion to their limits. What a member wants is estimated
// from the use each unit of its duty bought.
func (c *Controller) targets(members []Member, usage map[string]float64, sumLimits float64) map[string]float64 {
	out := make(map[string]float64, len(members))
	delivered, strictUse := 0.0, 0.0
	var burst []Member
	for _, m := range members {
		delivered += usage[m.Key]
		if m.Policy == Strict {
			out[m.Key] = m.Limit
			strictUse += min(usage[m.Key], m.Limit)
			continue
		}
		out[m.Key] = Entitlement(m, sumLimits)
		burst = append(burst, m)
	}
	active := 0
	for _, m := range members {
		if usage[m.Key] > 0 {
			active++
		}
	}
	evenSplit := delivered / float64(max(active, 1))
	remaining := max(delivered-strictUse, 0)
	for len(burst) > 0 {
		limits := 0.0
		for _, m := range burst {
			limits += m.Limit
		}
		if limits <= 0 {
			break
		}
		kept := burst[:0:0]
		for _, m := range burst {
			share := remaining * m.Limit / limits
			if wants := c.wants(m.Key, usage[m.Key], evenSplit); wants < share {
				out[m.Key] = wants
				remaining -= wants
				continue
			}
			kept = append(kept, m)
		}
		if len(kept) == len(burst) {
			for _, m := range burst {
				out[m.Key] = remaining * m.Limit / limits
			}
			break
		}
		burst = kept
	}
	return out
}

// wants estimates the use a container would make at full duty. A
// throttled one: its use divided by the duty that bought it. An
// unthrottled one that gets at least nine tenths of an even split of what
// the GPU delivers is held back by time-slicing, not by its own demand, and
// may want it all; one that gets less wants what it uses.
func (c *Controller) wants(key string, u, evenSplit float64) float64 {
	d := c.Duty(key)
	switch {
	case d <= 0:
		return 1
	case d < 1:
		return min(u/d, 1)
	case u >= 0.9*evenSplit:
		return 1
	}
	return u
}

// plans lays the throttled members' runs end to end in the period, in a
// stable order, so they take turns on the GPU.
func (c *Controller) plans(members []Member) map[string]Plan {
	keys := make([]string, 0, len(members))
	for _, m := range members {
		keys = append(keys, m.Key)
	}
	slices.Sort(keys)
	c.planned = c.runPeriod(keys)
	out := make(map[string]Plan, len(members))
	at, throttled := 0.0, false
	for _, k := range keys {
		d := c.Duty(k)
		p := Plan{Duty: d, Period: c.planned}
		if d < 1 {
			throttled = true
			p.Offset = math.Mod(at, 1)
			at += d
		}
		out[k] = p
	}
	if !throttled {
		c.period = c.BasePeriod // nothing to drain: back to the short period
		c.planned = c.period
	}
	return out
}

// runPeriod is the period the plans use: the drain period, or MinRun for
// every throttled container when that is longer, made a divisor of the
// window (so decisions still see whole periods) and never longer than
// the window (Strict's hold over time needs a decision every window). It
// follows the number of throttled containers, not their duties, so it
// stays put while feedback moves the duties: a period that moved with
// every decision would shift every run's phase each time.
func (c *Controller) runPeriod(keys []string) time.Duration {
	n := 0
	for _, k := range keys {
		if c.Duty(k) < 1 {
			n++
		}
	}
	want := time.Duration(n) * c.MinRun
	if want <= c.period {
		return c.period
	}
	longest := c.MaxPeriod
	if c.dt > 0 {
		longest = min(longest, c.dt)
	}
	return max(min(fitPeriod(want, c.dt), longest), c.period)
}

// longerPeriod is about twice the period, made a divisor or a multiple of
// the sample interval dt so that every decision sees whole periods, and
// at most max.
func longerPeriod(period, dt, maxPeriod time.Duration) time.Duration {
	return max(min(fitPeriod(2*period, dt), maxPeriod), period)
}

// fitPeriod is the shortest period at least p that is a divisor or a
// multiple of the window dt (p itself when dt is unknown).
func fitPeriod(p, dt time.Duration) time.Duration {
	switch {
	case dt <= 0 || p <= 0:
		return p
	case p < dt:
		return dt / (dt / p)
	}
	return dt * ((p + dt - 1) / dt)
}

// mean is the average use over the spans, and false when they cover no time.
func mean(spans []span) (float64, bool) {
	var dt, used float64
	for _, s := range spans {
		dt += s.dt
		used += s.used
	}
	if dt <= 0 {
		return 0, false
	}
	return used / dt, true
}

// windowCap caps a Strict container's duty so that its use over the last
// Window, with the next span (until the next decision) at that duty, stays
// within limit × Window. A unit of duty is taken to buy a unit of use,
// never less: a container that shared the GPU did get less than its duty,
// but crediting that would let work that idles for part of each window
// run longer than its limit in the rest.
func (c *Controller) windowCap(m Member, d, next float64) float64 {
	if next <= 0 || c.Window <= 0 {
		return d
	}
	hist := c.used[m.Key]
	// Keep what falls in the Window once the next span has passed.
	keep, total := c.Window.Seconds()-next, 0.0
	i := len(hist)
	for i > 0 && total+hist[i-1].dt <= keep+1e-9 {
		total += hist[i-1].dt
		i--
	}
	hist = hist[i:]
	c.used[m.Key] = hist
	used := 0.0
	for _, s := range hist {
		used += s.used
	}
	rate := max(m.Limit*(total+next)-used, 0) / next // use allowed until the next decision
	return min(d, max(rate, MinDuty))
}

// Forget drops a container's state, when it leaves the GPU.
func (c *Controller) Forget(key string) {
	delete(c.duty, key)
	delete(c.used, key)
	delete(c.pending, key)
}
