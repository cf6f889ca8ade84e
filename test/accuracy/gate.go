package accuracy

import (
	"fmt"
	"io"
	"time"

	"github.com/gpuslice/gpuslice/pkg/enforce"
)

// MaxErrorPP is the most, in percentage points, a real cell may miss its
// target by; a mutation whose worst cell misses by more is detected.
const MaxErrorPP = 2.0

// Cells is the gate's matrix: strict and burst; 2, 3 and 4 tenants with
// limits from 10 to 70 %; short (1 ms) and long (20 ms) kernels; shallow
// (2) and deep (8) queues.
func Cells() []Cell {
	var out []Cell
	for _, p := range []enforce.Policy{enforce.Strict, enforce.Burst} {
		for _, limits := range [][]float64{{0.3, 0.7}, {0.1, 0.3, 0.5}, {0.1, 0.1, 0.3, 0.5}} {
			for _, k := range []time.Duration{time.Millisecond, 20 * time.Millisecond} {
				for _, q := range []int{2, 8} {
					out = append(out, Cell{Policy: p, Limits: limits, Kernel: k, Queue: q})
				}
			}
		}
	}
	return out
}

// Gate runs every cell with the real controller, then with each mutation,
// and writes one line per cell and one per mutation:
//
//	accuracy policy=strict tenants=2 limits=30/70 kernel=1 queue=2 error_pp=0.41
//	mutation open-loop max_error_pp=21.20 detected=true
//
// It reports whether every real cell was within MaxErrorPP and every
// mutation was detected.
func Gate(w io.Writer, cells []Cell, o Options) (bool, error) {
	pass := true
	for _, c := range cells {
		r, err := Run(c, Real, o)
		if err != nil {
			return false, fmt.Errorf("%s: %w", c, err)
		}
		fmt.Fprintf(w, "accuracy %s error_pp=%.2f\n", c, r.ErrorPP)
		if r.ErrorPP > MaxErrorPP {
			pass = false
		}
	}
	detected, err := mutationsDetected(w, cells, Mutations, func(c Cell, m Mutation) (Result, error) { return Run(c, m, o) })
	return pass && detected, err
}

// mutationsDetected runs every cell under each mutation and writes one
// line per mutation with its worst cell; it reports whether every one
// missed by more than MaxErrorPP somewhere.
func mutationsDetected(w io.Writer, cells []Cell, mutations []Mutation, run func(Cell, Mutation) (Result, error)) (bool, error) {
	all := true
	for _, m := range mutations {
		worst := 0.0
		for _, c := range cells {
			r, err := run(c, m)
			if err != nil {
				return false, fmt.Errorf("%s %s: %w", m, c, err)
			}
			worst = max(worst, r.ErrorPP)
		}
		detected := worst > MaxErrorPP
		fmt.Fprintf(w, "mutation %s max_error_pp=%.2f detected=%t\n", m, worst, detected)
		all = all && detected
	}
	return all, nil
}

// Variant is one change to the model's physics or the agent's timing.
type Variant struct {
	Name   string
	Change func(*Options)
}

// Variants are the physical effects the sensitivity report varies.
func Variants() []Variant {
	return []Variant{
		{"defaults", func(*Options) {}},
		{"noise-2pp", func(o *Options) { o.Model.NoisePP = 2 }},
		{"noise-5pp", func(o *Options) { o.Model.NoisePP = 5 }},
		{"nvml-sample-period-1s", func(o *Options) { o.Model.SamplePeriod = time.Second }},
		{"time-slice-10ms", func(o *Options) { o.Model.TimeSlice = 10 * time.Millisecond }},
		{"switch-cost-200us", func(o *Options) { o.Model.SwitchCost = 200 * time.Microsecond }},
		{"sample-interval-250ms", func(o *Options) { o.SampleInterval = 250 * time.Millisecond }},
		{"sample-interval-2s", func(o *Options) { o.SampleInterval = 2 * time.Second }},
		{"settle-10s", func(o *Options) { o.Settle = 10 * time.Second }},
	}
}

// Sensitivity writes, for each variant, the real controller's worst cell
// and the MIG turns' worst cell within their claim:
//
//	sensitivity noise-2pp max_error_pp=1.47 worst="policy=burst ..."
//	sensitivity mig-noise-2pp max_error_pp=0.51 worst="policy=burst ..."
func Sensitivity(w io.Writer, cells []Cell) error {
	for _, v := range Variants() {
		o := DefaultOptions()
		v.Change(&o)
		worst, at := 0.0, ""
		for _, c := range cells {
			r, err := Run(c, Real, o)
			if err != nil {
				return fmt.Errorf("%s %s: %w", v.Name, c, err)
			}
			if r.ErrorPP >= worst {
				worst, at = r.ErrorPP, c.String()
			}
		}
		fmt.Fprintf(w, "sensitivity %s max_error_pp=%.2f worst=%q\n", v.Name, worst, at)
		if err := sensitivityMIG(w, v, o, cells); err != nil {
			return err
		}
	}
	return nil
}

// sensitivityMIG writes, for one variant, the turns' worst cell within
// their claim on a shared MIG instance:
//
//	sensitivity mig-noise-2pp max_error_pp=0.51 worst="policy=burst ..."
func sensitivityMIG(w io.Writer, v Variant, o Options, cells []Cell) error {
	turns := enforce.NewTurns(o.Period)
	worst, at := 0.0, ""
	for _, c := range cells {
		if !InMIGClaim(c, turns) {
			continue
		}
		r, err := RunMIG(c, Real, o)
		if err != nil {
			return fmt.Errorf("mig %s %s: %w", v.Name, c, err)
		}
		if r.ErrorPP >= worst {
			worst, at = r.ErrorPP, c.String()
		}
	}
	fmt.Fprintf(w, "sensitivity mig-%s max_error_pp=%.2f worst=%q\n", v.Name, worst, at)
	return nil
}
