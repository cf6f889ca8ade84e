package enforce

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"time"
)

// Clock is the time a throttle keeps; tests may drive their own.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns the current time.
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer starts a timer and returns its channel and its stop function.
func (SystemClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// Throttle runs one container on its plan: in every period it is thawed
// for its run and frozen for the rest. It always leaves the container
// thawed when it stops.
type Throttle struct {
	f         Freezer
	clock     Clock
	epoch     time.Time
	plan      atomic.Pointer[Plan]
	changed   chan struct{}
	throttled atomic.Int64 // nanoseconds spent frozen
	cancel    context.CancelFunc
	done      chan struct{}
	err       atomic.Value // error that ended the throttle, if any
	thawErr   atomic.Value // error of the last thaw, when it failed
}

// Cycle splits one throttle period at duty d into the time the container
// runs, first, and the time it is then frozen.
func Cycle(period time.Duration, duty float64) (run, frozen time.Duration) {
	if duty >= 1 {
		return period, 0
	}
	run = time.Duration(float64(period) * max(duty, 0))
	return run, period - run
}

// StartThrottle starts a throttle on a plan, its periods counted from
// epoch; throttles that share an epoch keep their plans' offsets apart.
func StartThrottle(f Freezer, p Plan, epoch time.Time, clock Clock) *Throttle {
	ctx, cancel := context.WithCancel(context.Background())
	if clock == nil {
		clock = SystemClock{}
	}
	t := &Throttle{f: f, clock: clock, epoch: epoch, changed: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	t.SetPlan(p)
	go t.run(ctx)
	return t
}

// SetPlan changes the plan; it takes effect at once.
func (t *Throttle) SetPlan(p Plan) {
	p.Duty = min(max(p.Duty, MinDuty), 1)
	t.plan.Store(&p)
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// Plan returns the plan in force.
func (t *Throttle) Plan() Plan { return *t.plan.Load() }

// Duty returns the current duty.
func (t *Throttle) Duty() float64 { return t.Plan().Duty }

// Throttled returns how long the container has been frozen in total.
func (t *Throttle) Throttled() time.Duration { return time.Duration(t.throttled.Load()) }

// Err returns the error that ended the throttle early (the cgroup
// vanished), or nil while it runs.
func (t *Throttle) Err() error {
	if err, ok := t.err.Load().(error); ok {
		return err
	}
	return nil
}

// ThawErr is the error of the thaw the throttle made as it stopped, or nil
// when the container was thawed (or is gone). Read it after Stop or Done.
func (t *Throttle) ThawErr() error {
	if err, ok := t.thawErr.Load().(error); ok {
		return err
	}
	return nil
}

// Done is closed when the throttle has stopped and thawed the container.
func (t *Throttle) Done() <-chan struct{} { return t.done }

// Stop ends the throttle, thawing the container, and waits for it.
func (t *Throttle) Stop() {
	t.cancel()
	<-t.done
}

func (t *Throttle) run(ctx context.Context) {
	defer close(t.done)
	// Whatever happens, leave the container running. A cgroup that is
	// gone has nothing to thaw; any other failure is kept for ThawErr.
	defer func() {
		if err := t.f.Thaw(); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.thawErr.Store(err)
		}
	}()
	f, err := t.f.open()
	if err != nil {
		t.err.Store(err)
		return
	}
	defer f.Close()
	frozen := false
	var since time.Time
	for {
		now := t.clock.Now()
		run, next := t.Plan().At(now.Sub(t.epoch))
		switch {
		case run && frozen:
			if err := f.Thaw(); err != nil {
				t.err.Store(err)
				return
			}
			frozen = false
			t.throttled.Add(int64(now.Sub(since)))
		case !run && !frozen:
			if err := f.Freeze(); err != nil {
				t.err.Store(err)
				return
			}
			frozen, since = true, now
		}
		c, stop := t.clock.NewTimer(next - now.Sub(t.epoch))
		select {
		case <-ctx.Done():
			stop()
			if frozen {
				t.throttled.Add(int64(t.clock.Now().Sub(since)))
			}
			return
		case <-t.changed:
			stop()
		case <-c:
		}
	}
}
