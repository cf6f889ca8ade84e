package quota

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"
)

// RoomSteps is how finely the estimate of when a spent budget has room
// again divides its window.
const RoomSteps = 8

// roomBudget is b measuring the use its window will still hold step
// steps of RoomSteps from now, if nothing more is used: its use over the
// last window·(RoomSteps−step)/RoomSteps.
func roomBudget(b Budget, step int) Budget {
	b.Window = Duration{Duration: b.Window.Duration * time.Duration(RoomSteps-step) / RoomSteps}
	return b
}

// MeasureRoom reads, for each budget key with a spent namespace (spent,
// by key and namespace), the use its window will still hold at each step
// from now (index step-1, step 1 to RoomSteps-1), by namespace: one query
// per step and spent key, only while some budget is spent. A namespace
// with no series at a step holds nothing then; one whose answer is not a
// valid number has no estimate.
//
// A budget recorded says was read from the recording rules' series (rec)
// is estimated from them too: its shorter windows are covered as well.
func MeasureRoom(ctx context.Context, q Querier, budgets map[string]Budget, spent map[string]map[string]bool, now time.Time, timeout time.Duration, series Series, rec Recording, recorded map[string]bool) (map[string]map[string][]float64, int, error) {
	out := map[string]map[string][]float64{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(MaxConcurrentQueries)
	type answer struct {
		key  string
		step int
		vals map[string]float64
		bad  map[string]bool
	}
	var answers []*answer
	for key, nss := range spent {
		b, ok := budgets[key]
		if !ok || len(nss) == 0 {
			continue
		}
		for step := 1; step < RoomSteps; step++ {
			a := &answer{key: key, step: step, vals: map[string]float64{}, bad: map[string]bool{}}
			answers = append(answers, a)
			promql := BudgetQuery(roomBudget(b, step), series)
			if recorded[key] {
				promql = RecordedBudgetQuery(roomBudget(b, step), series, rec.Interval)
			}
			g.Go(func() error {
				v, err := query(gctx, q, promql, now, timeout)
				if err != nil {
					return err
				}
				for _, s := range v {
					ns := string(s.Metric["namespace"])
					if f := float64(s.Value); finite(f) && f >= 0 {
						a.vals[ns] = f
					} else {
						a.bad[ns] = true
					}
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return nil, len(answers), fmt.Errorf("room estimate: %w", err)
	}
	invalid := map[string]map[string]bool{}
	for _, a := range answers {
		for ns := range spent[a.key] {
			if out[a.key] == nil {
				out[a.key], invalid[a.key] = map[string][]float64{}, map[string]bool{}
			}
			if out[a.key][ns] == nil {
				out[a.key][ns] = make([]float64, RoomSteps-1)
			}
			out[a.key][ns][a.step-1] = a.vals[ns]
			invalid[a.key][ns] = invalid[a.key][ns] || a.bad[ns]
		}
	}
	for key, nss := range invalid {
		for ns, bad := range nss {
			if bad {
				delete(out[key], ns)
			}
		}
	}
	return out, len(answers), nil
}

// RoomAfter is how long until a spent budget of gpuHours over window has
// room again if nothing more is used, to the step: the first step whose
// held use (held[step-1]) is under gpuHours, or the whole window, when the
// window holds nothing of today's use. Zero when held is missing.
func RoomAfter(window time.Duration, gpuHours float64, held []float64) time.Duration {
	if len(held) != RoomSteps-1 {
		return 0
	}
	for step := 1; step < RoomSteps; step++ {
		if held[step-1] < gpuHours {
			return window * time.Duration(step) / RoomSteps
		}
	}
	return window
}
