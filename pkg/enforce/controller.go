package enforce

import (
	"fmt"
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

// Controller decides, per GPU, which fraction of each throttle period
// each container may run (its duty). It is pure: callers feed it the
// measurements of each window and apply the duties it returns.
type Controller struct {
	// Gain is how far each window moves a duty toward its estimate, 0..1.
	Gain float64
	// Saturation is the device utilization above which the GPU counts as
	// contended for Burst containers.
	Saturation float64
	// Window is the span a Strict container's use is held to its limit
	// over.
	Window time.Duration
	duty   map[string]float64
	used   map[string][]span // Strict containers' recent use, oldest first
}

// span is one measurement window: its length and the GPU time used in it.
type span struct {
	dt, used float64 // seconds
}

// NewController returns a controller with every duty at 1.
func NewController() *Controller {
	return &Controller{Gain: 0.5, Saturation: 0.95, Window: StrictWindow, duty: map[string]float64{}, used: map[string][]span{}}
}

// Duty returns a container's current duty; 1 for one never throttled.
func (c *Controller) Duty(key string) float64 {
	if d, ok := c.duty[key]; ok {
		return d
	}
	return 1
}

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
// (dt long) and the GPU's utilization, and returns every member's new duty.
//
// A container that ran at duty d and used u would use about u/d at full
// duty; to use its entitlement E it should run at E*d/u. Duties move
// toward that estimate by Gain each window, which settles over a few
// windows without oscillating on the noise of one. Strict containers are
// always steered to their limit. Burst containers are steered to their
// entitlement only while the GPU is contended: saturated, with some
// container not over its entitlement (which stays true once every
// container sits at its entitlement, so the controller does not release
// and re-throttle around the target); otherwise their duty returns to 1
// and they use idle GPU time.
//
// Strict is strict over time, not per sample. A Strict container starts
// at its limit, not at 1; an idle window holds its duty where it was
// rather than raising it (idleness teaches nothing and earns no credit);
// and its duty is capped so that its use over the last Window, plus a
// full next window at that duty, stays within limit × Window. A workload
// that switches on and off around the sample interval therefore gets no
// more than its limit over any Window.
func (c *Controller) Update(members []Member, deviceUtilization float64, dt time.Duration) map[string]float64 {
	sumLimits := 0.0
	for _, m := range members {
		sumLimits += m.Limit
	}
	contended := false
	if deviceUtilization >= c.Saturation {
		for _, m := range members {
			if m.Usage <= Entitlement(m, sumLimits)*1.02 {
				contended = true
			}
		}
	}
	out := make(map[string]float64, len(members))
	for _, m := range members {
		d, seen := c.duty[m.Key]
		if !seen {
			d = 1
			if m.Policy == Strict {
				d = min(max(m.Limit, MinDuty), 1)
			}
		}
		target := 1.0
		switch {
		case (m.Policy == Strict || contended) && m.Usage > 0:
			target = Entitlement(m, sumLimits) * d / m.Usage
		case m.Policy == Strict && seen:
			target = d // idle: hold
		}
		target = min(max(target, MinDuty), 1)
		d += c.Gain * (target - d)
		if target == 1 && d > 0.98 {
			d = 1
		}
		if m.Policy == Strict {
			d = c.windowCap(m, d, dt.Seconds())
		} else {
			delete(c.used, m.Key)
		}
		c.duty[m.Key] = d
		out[m.Key] = d
	}
	return out
}

// windowCap records a Strict container's use over the last dt and caps
// its duty so that the use over the last Window, with a next window of
// dt at full duty, stays within limit × Window.
func (c *Controller) windowCap(m Member, d, dt float64) float64 {
	if dt <= 0 || c.Window <= 0 {
		return d
	}
	c.used[m.Key] = append(c.used[m.Key], span{dt: dt, used: m.Usage * dt})
	hist := c.used[m.Key]
	// Keep what falls in the Window once the next dt has passed.
	keep, total := c.Window.Seconds()-dt, 0.0
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
	budget := m.Limit*(total+dt) - used
	return min(d, max(budget/dt, MinDuty))
}

// Forget drops a container's state, when it leaves the GPU.
func (c *Controller) Forget(key string) {
	delete(c.duty, key)
	delete(c.used, key)
}
