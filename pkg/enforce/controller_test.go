package enforce

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// plant is a GPU time-sliced as a real one is: each container asks for
// duty×demand, and when the asks add up to more than the whole, every
// asking container gets an even slice, a container that asks less than its
// slice gets what it asks, and what it leaves is split among the rest.
func plant(duty, demand []float64) (usage []float64, device float64) {
	usage = make([]float64, len(duty))
	open := []int{}
	for i := range duty {
		if duty[i]*demand[i] > 0 {
			open = append(open, i)
		}
	}
	left := 1.0
	for len(open) > 0 {
		slice := left / float64(len(open))
		var rest []int
		for _, i := range open {
			if ask := duty[i] * demand[i]; ask <= slice {
				usage[i] = ask
				left -= ask
			} else {
				rest = append(rest, i)
			}
		}
		if len(rest) == len(open) {
			for _, i := range rest {
				usage[i] = slice
			}
			break
		}
		open = rest
	}
	for _, u := range usage {
		device += u
	}
	return usage, device
}

func simulate(t *testing.T, limits, demands []float64, policy Policy, windows int) []float64 {
	t.Helper()
	c := NewController(100 * time.Millisecond)
	duty := make([]float64, len(limits))
	for i := range duty {
		duty[i] = 1
	}
	var usage []float64
	for range windows {
		var device float64
		usage, device = plant(duty, demands)
		members := make([]Member, len(limits))
		for i := range limits {
			members[i] = Member{Key: fmt.Sprint(i), Limit: limits[i], Policy: policy, Usage: usage[i]}
		}
		d := c.Update(members, device, time.Second)
		for i := range duty {
			duty[i] = d[fmt.Sprint(i)].Duty
		}
	}
	return usage
}

func TestControllerConverges(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		limits, demands []float64
		policy          Policy
		want            []float64
	}{
		"strict 30/70, both greedy":         {[]float64{0.3, 0.7}, []float64{1, 1}, Strict, []float64{0.3, 0.7}},
		"strict 10/30/50, all greedy":       {[]float64{0.1, 0.3, 0.5}, []float64{1, 1, 1}, Strict, []float64{0.1, 0.3, 0.5}},
		"strict 10/10/30/50, all greedy":    {[]float64{0.1, 0.1, 0.3, 0.5}, []float64{1, 1, 1, 1}, Strict, []float64{0.1, 0.1, 0.3, 0.5}},
		"strict caps even an idle gpu":      {[]float64{0.3}, []float64{1}, Strict, []float64{0.3}},
		"strict leaves a modest user alone": {[]float64{0.5, 0.5}, []float64{0.2, 1}, Strict, []float64{0.2, 0.5}},
		"burst 30/70, both greedy":          {[]float64{0.3, 0.7}, []float64{1, 1}, Burst, []float64{0.3, 0.7}}, "burst 10/30/50/10, all greedy": {[]float64{0.1, 0.3, 0.5, 0.1}, []float64{1, 1, 1, 1}, Burst, []float64{0.1, 0.3, 0.5, 0.1}},
		"burst 10/30/50 shares the unallocated tenth in proportion": {[]float64{0.1, 0.3, 0.5}, []float64{1, 1, 1}, Burst, []float64{0.1 / 0.9, 0.3 / 0.9, 0.5 / 0.9}},
		"strict 10/30/50 leaves the unallocated tenth idle":         {[]float64{0.1, 0.3, 0.5}, []float64{1, 1, 1}, Strict, []float64{0.1, 0.3, 0.5}},
		"burst uses an idle gpu":                                    {[]float64{0.3}, []float64{1}, Burst, []float64{1}},
		"burst fills what a modest user leaves":                     {[]float64{0.5, 0.5}, []float64{0.2, 1}, Burst, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got := simulate(t, tc.limits, tc.demands, tc.policy, 40)
			if tc.want == nil {
				// Burst beside a modest neighbour: the neighbour gets all
				// it asks for, the greedy one most of the rest, up to the
				// saturation threshold.
				if got[0] < 0.19 || got[1] < 0.7 || got[0]+got[1] > 1.0001 {
					t.Errorf("shares %.3f: want the modest one at ~0.2 and the greedy one at 0.7 or more", got)
				}
				return
			}
			for i := range got {
				if math.Abs(got[i]-tc.want[i]) > 0.02 {
					t.Errorf("container %d: share %.3f, want %.2f ± 0.02 (all: %.3f)", i, got[i], tc.want[i], got)
				}
			}
		})
	}
}

func TestControllerDutyBounds(t *testing.T) {
	t.Parallel()
	c := NewController(100 * time.Millisecond)
	for range 50 {
		d := c.Update([]Member{{Key: "x", Limit: 0.001, Policy: Strict, Usage: 1}}, 1, time.Second)["x"].Duty
		if d < MinDuty || d > 1 {
			t.Fatalf("duty %v outside [MinDuty, 1]", d)
		}
	}
	if got := c.Duty("x"); math.Abs(got-MinDuty) > 1e-9 {
		t.Errorf("duty of a container far over its limit = %v, want MinDuty", got)
	}
	c.Forget("x")
	if got := c.Duty("x"); got != 1 {
		t.Errorf("forgotten container's duty = %v, want 1", got)
	}
	for _, in := range []string{"", "burst", "strict"} {
		if _, err := ParsePolicy(in); err != nil {
			t.Errorf("ParsePolicy(%q) = %v", in, err)
		}
	}
	if _, err := ParsePolicy("fair"); err == nil {
		t.Error("ParsePolicy(fair) succeeded")
	}
}

// onOff runs one Strict container whose work switches on and off with the
// given period against update (a controller), sampled every second, and
// returns the highest share of the GPU it used over any 10 s window, judged
// from the plant, not from what the controller was told.
func onOff(update func(usage float64) float64, period, phase time.Duration) float64 {
	const step = 50 * time.Millisecond
	const sample = time.Second
	duty := 1.0
	var perStep []float64
	var sampleUse float64
	for t := time.Duration(0); t < 120*time.Second; t += step {
		u := 0.0
		if ((t+phase)/(period/2))%2 == 0 {
			u = duty // a greedy kernel stream runs whenever thawed
		}
		perStep = append(perStep, u)
		sampleUse += u * step.Seconds()
		if (t+step)%sample == 0 {
			duty, sampleUse = update(sampleUse/sample.Seconds()), 0
		}
	}
	n := int(StrictWindow / step)
	worst := 0.0
	for i := 0; i+n <= len(perStep); i++ {
		sum := 0.0
		for _, u := range perStep[i : i+n] {
			sum += u
		}
		worst = max(worst, sum/float64(n))
	}
	return worst
}

func strictUpdate(c *Controller, limit float64) func(float64) float64 {
	return func(u float64) float64 {
		return c.Update([]Member{{Key: "x", Limit: limit, Policy: Strict, Usage: u}}, u, time.Second)["x"].Duty
	}
}

// TestStrictHoldsOverTimeAgainstOnOffWork is the on/off attack: work
// switched on and off around the sample interval must not get more than
// the limit (+2 points) over any 10 s window. It also shows the check can
// fail: a controller that lets idle windows release the duty (as this one
// once did) and keeps no window of past use lets the same work through.
func TestStrictHoldsOverTimeAgainstOnOffWork(t *testing.T) {
	t.Parallel()
	for _, limit := range []float64{0.1, 0.2, 0.5} {
		for _, period := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 3 * time.Second, 4 * time.Second} {
			for _, phase := range []time.Duration{0, 250 * time.Millisecond, 700 * time.Millisecond} {
				if worst := onOff(strictUpdate(NewController(100*time.Millisecond), limit), period, phase); worst > limit+0.02 {
					t.Errorf("limit %.2f, %s on/off, phase %s: %.3f of the GPU over the worst 10 s window", limit, period, phase, worst)
				}
			}
		}
	}
	broken := NewController(100 * time.Millisecond)
	broken.Window = 0
	forgetful := func(u float64) float64 {
		if u == 0 {
			broken.duty["x"] = 1 // idle earns back full duty
		}
		return strictUpdate(broken, 0.2)(u)
	}
	if worst := onOff(forgetful, 2*time.Second, 0); worst <= 0.22 {
		t.Errorf("the broken controller held the on/off work to %.3f: the check cannot fail", worst)
	}
}

// TestPodPolicyModes: by default a pod may only make its policy stricter
// than the node's; an administrator can allow either way or ignore pods.
func TestPodPolicyModes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode      PodPolicyMode
		node, pod Policy
		want      Policy
	}{
		{PodPoliciesStricterOnly, Strict, Burst, Strict}, // the attack: burst on a strict node
		{PodPoliciesStricterOnly, Burst, Strict, Strict},
		{PodPoliciesStricterOnly, Burst, "", Burst},
		{PodPoliciesAllow, Strict, Burst, Burst},
		{PodPoliciesIgnore, Burst, Strict, Burst},
	}
	for _, tc := range tests {
		if got := tc.mode.Effective(tc.node, tc.pod); got != tc.want {
			t.Errorf("%s: node %s, pod %q: %s, want %s", tc.mode, tc.node, tc.pod, got, tc.want)
		}
	}
	if m, err := ParsePodPolicyMode(""); err != nil || m != PodPoliciesStricterOnly {
		t.Errorf("default mode = %s, %v", m, err)
	}
	if _, err := ParsePodPolicyMode("sometimes"); err == nil {
		t.Error("an unknown mode was accepted")
	}
	if p, err := ParseUnauthorizedPolicy(""); err != nil || p != UnauthorizedKill {
		t.Errorf("default unauthorized policy = %s, %v", p, err)
	}
	if _, err := ParseUnauthorizedPolicy("ignore"); err == nil {
		t.Error("an unknown unauthorized policy was accepted")
	}
}

// TestMinRunBoundsTransitions: however many containers a GPU is throttled
// for, its period is at least MinRun for each, so the freezer transitions
// it costs stay under 2/MinRun a second and an even share runs MinRun;
// the period is a divisor of the window and no longer, holds while
// feedback moves the duties, and goes back once the crowd leaves.
func TestMinRunBoundsTransitions(t *testing.T) {
	const dt = time.Second
	for _, tc := range []struct {
		name       string
		containers int
		minRun     time.Duration
		wantPeriod time.Duration
	}{
		{"few: the configured period holds", 4, 20 * time.Millisecond, 100 * time.Millisecond},
		{"25 at 4%: stretched to 500ms", 25, 20 * time.Millisecond, 500 * time.Millisecond},
		{"25 at 4%, 10ms runs: 250ms", 25, 10 * time.Millisecond, 250 * time.Millisecond},
		{"30 at 3.3%, 10ms: a divisor of the window", 30, 10 * time.Millisecond, 333333333},
		{"off: runs may be 4ms", 25, 0, 100 * time.Millisecond},
		{"50 at 2%, 30ms: no longer than the window", 50, 30 * time.Millisecond, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewController(100 * time.Millisecond)
			c.MinRun = tc.minRun
			members := make([]Member, tc.containers)
			for i := range members {
				members[i] = Member{Key: fmt.Sprint(i), Limit: 1 / float64(tc.containers), Policy: Strict, Usage: 1 / float64(tc.containers)}
			}
			var plans map[string]Plan
			for range 5 {
				plans = c.Update(members, 1, dt)
			}
			transitions, capped := 0.0, false
			for k, p := range plans {
				capped = capped || p.Period == dt
				if p.Period != tc.wantPeriod {
					t.Fatalf("%s: period %v, want %v", k, p.Period, tc.wantPeriod)
				}
				run, _ := Cycle(p.Period, max(p.Duty, MinDuty))
				if tc.minRun > 0 && run < tc.minRun*99/100 && p.Period < dt {
					t.Errorf("%s: runs for %v a period, under MinRun %v", k, run, tc.minRun)
				}
				transitions += 2 * float64(dt) / float64(p.Period)
			}
			if tc.minRun > 0 && !capped && transitions > 1.01*2*float64(dt)/float64(tc.minRun) {
				t.Errorf("%.0f transitions a second, over the bound %.0f", transitions, 2*float64(dt)/float64(tc.minRun))
			}
			// Feedback moves the duties (the work grows); the period stays.
			for i := range members {
				members[i].Usage *= 1.5
			}
			for k, p := range c.Update(members, 1, dt) {
				if p.Period != tc.wantPeriod {
					t.Fatalf("%s: period moved to %v when the duties did", k, p.Period)
				}
			}
			// The crowd leaves: one container keeps the GPU, now all of it.
			var got time.Duration
			for range 10 {
				got = c.Update([]Member{{Key: "0", Limit: 1, Policy: Strict, Usage: 0.1}}, 0.1, dt)["0"].Period
			}
			if got != 100*time.Millisecond {
				t.Errorf("after the crowd left the period is %v, want the configured 100ms", got)
			}
		})
	}
}
