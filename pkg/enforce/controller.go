package enforce

import "fmt"

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

// Controller decides, per GPU, which fraction of each throttle period
// each container may run (its duty). It is pure: callers feed it the
// measurements of each window and apply the duties it returns.
type Controller struct {
	// Gain is how far each window moves a duty toward its estimate, 0..1.
	Gain float64
	// Saturation is the device utilization above which the GPU counts as
	// contended for Burst containers.
	Saturation float64
	duty       map[string]float64
}

// NewController returns a controller with every duty at 1.
func NewController() *Controller {
	return &Controller{Gain: 0.5, Saturation: 0.95, duty: map[string]float64{}}
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
// and the GPU's utilization, and returns every member's new duty.
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
func (c *Controller) Update(members []Member, deviceUtilization float64) map[string]float64 {
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
		d := c.Duty(m.Key)
		target := 1.0
		if (m.Policy == Strict || contended) && m.Usage > 0 {
			// A container not running at all teaches nothing; let it run.
			target = Entitlement(m, sumLimits) * d / m.Usage
		}
		target = min(max(target, MinDuty), 1)
		d += c.Gain * (target - d)
		if target == 1 && d > 0.98 {
			d = 1
		}
		c.duty[m.Key] = d
		out[m.Key] = d
	}
	return out
}

// Forget drops a container's state, when it leaves the GPU.
func (c *Controller) Forget(key string) { delete(c.duty, key) }
