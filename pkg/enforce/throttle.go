package enforce

import (
	"context"
	"math"
	"sync/atomic"
	"time"
)

// Throttle runs one container on a duty cycle: in every period it is
// thawed for duty×period and frozen for the rest. It always leaves the
// container thawed when it stops.
type Throttle struct {
	f         Freezer
	period    time.Duration
	duty      atomic.Uint64 // math.Float64bits
	throttled atomic.Int64  // nanoseconds spent frozen
	cancel    context.CancelFunc
	done      chan struct{}
	err       atomic.Value // error that ended the throttle, if any
}

// StartThrottle starts a throttle at duty 1 (never frozen).
func StartThrottle(f Freezer, period time.Duration) *Throttle {
	ctx, cancel := context.WithCancel(context.Background())
	t := &Throttle{f: f, period: period, cancel: cancel, done: make(chan struct{})}
	t.duty.Store(math.Float64bits(1))
	go t.run(ctx)
	return t
}

// SetDuty sets the share of each period the container runs, MinDuty..1.
func (t *Throttle) SetDuty(d float64) { t.duty.Store(math.Float64bits(min(max(d, MinDuty), 1))) }

// Duty returns the current duty.
func (t *Throttle) Duty() float64 { return math.Float64frombits(t.duty.Load()) }

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
	// gone has nothing to thaw, so the error is of no interest.
	defer func() { _ = t.f.Thaw() }()
	wait := func(d time.Duration) bool {
		if d <= 0 {
			return ctx.Err() == nil
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	for {
		d := t.Duty()
		if d >= 1 {
			if !wait(t.period) {
				return
			}
			continue
		}
		run := time.Duration(float64(t.period) * d)
		if !wait(run) {
			return
		}
		if err := t.f.Freeze(); err != nil {
			t.err.Store(err)
			return
		}
		start := time.Now()
		ok := wait(t.period - run)
		if err := t.f.Thaw(); err != nil {
			t.err.Store(err)
			return
		}
		t.throttled.Add(int64(time.Since(start)))
		if !ok {
			return
		}
	}
}
