package accuracy

import (
	"bytes"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/enforce"
)

// TestGate is make bench-accuracy inside make test: every cell within
// MaxErrorPP of its target on the realistic model, and every broken
// controller caught. It runs in virtual time, so the machine's load
// cannot change its result.
func TestGate(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	ok, err := Gate(&out, Cells(), DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Errorf("the gate failed:\n%s", out.String())
	}
	cell := regexp.MustCompile(`^accuracy policy=(strict|burst) tenants=\d limits=[\d/]+ kernel=\d+ queue=\d+ error_pp=\d+\.\d\d$`)
	mutation := regexp.MustCompile(`^mutation \S+ max_error_pp=\d+\.\d\d detected=(true|false)$`)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(Cells())+len(Mutations) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(Cells())+len(Mutations), out.String())
	}
	for i, l := range lines {
		re := cell
		if i >= len(Cells()) {
			re = mutation
		}
		if !re.MatchString(l) {
			t.Errorf("line %q does not match %s", l, re)
		}
	}
}

// The same run twice gives the same numbers: nothing but the model's
// virtual time decides them.
func TestDeterministic(t *testing.T) {
	t.Parallel()
	c := Cell{Policy: enforce.Strict, Limits: []float64{0.1, 0.3, 0.5}, Kernel: 20 * time.Millisecond, Queue: 8}
	a, err := Run(c, Real, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Run(c, Real, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Shares {
		if a.Shares[i] != b.Shares[i] {
			t.Fatalf("shares differ between runs: %v and %v", a.Shares, b.Shares)
		}
	}
}

// Under Burst a modest tenant beside a greedy one gets all it asks for and
// the greedy one the rest of the GPU; under Strict the modest one is left
// alone and the greedy one held to its limit.
func TestModestNeighbour(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		policy enforce.Policy
		want   []float64 // share of the wall time
	}{
		{enforce.Burst, []float64{0.2, 0.78}},
		{enforce.Strict, []float64{0.2, 0.5}},
	} {
		c := Cell{Policy: tc.policy, Limits: []float64{0.5, 0.5}, Kernel: time.Millisecond, Queue: 2, Demands: []float64{0.2, 1}}
		r, err := Run(c, Real, DefaultOptions())
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range tc.want {
			got := r.Shares[i]
			if tc.policy == enforce.Burst {
				got *= r.Delivered // Burst shares are of the delivered work
			}
			if math.Abs(got-want) > 0.02 {
				t.Errorf("%s: tenant %d got %.3f of the GPU, want %.2f", tc.policy, i, got, want)
			}
		}
	}
}

func TestRunRejectsBadCells(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]Cell{
		"no tenants":   {Policy: enforce.Strict, Kernel: time.Millisecond, Queue: 1},
		"no kernel":    {Policy: enforce.Strict, Limits: []float64{0.5}, Queue: 1},
		"no queue":     {Policy: enforce.Strict, Limits: []float64{0.5}, Kernel: time.Millisecond},
		"demand 2":     {Policy: enforce.Strict, Limits: []float64{0.5}, Kernel: time.Millisecond, Queue: 1, Demands: []float64{2}},
		"more demands": {Policy: enforce.Strict, Limits: []float64{0.5}, Kernel: time.Millisecond, Queue: 1, Demands: []float64{1, 1}},
	} {
		if _, err := Run(c, Real, DefaultOptions()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestGateMIG is the MIG part of make bench-accuracy: on a shared
// instance every cell within the turns' claim is within MaxErrorPP of its
// share, judged by completed kernels, and every broken variant of the
// turns is caught; cells beyond the claim are written, and say so.
func TestGateMIG(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	ok, err := GateMIG(&out, Cells(), DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Errorf("the MIG gate failed:\n%s", out.String())
	}
	cell := regexp.MustCompile(`^accuracy mig policy=(strict|burst) tenants=\d limits=[\d/]+ kernel=\d+ queue=\d+ queued_ms=\d+ claim=(true|false) error_pp=\d+\.\d\d$`)
	mutation := regexp.MustCompile(`^mutation mig-\S+ max_error_pp=\d+\.\d\d detected=true$`)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(Cells())+len(MIGMutations) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(Cells())+len(MIGMutations), out.String())
	}
	claimed := 0
	for i, l := range lines {
		re := cell
		if i >= len(Cells()) {
			re = mutation
		}
		if !re.MatchString(l) {
			t.Errorf("line %q does not match %s", l, re)
		}
		if strings.Contains(l, "claim=true") {
			claimed++
		}
	}
	// The claim covers most of the matrix, not a chosen corner of it.
	if claimed < len(Cells())*3/4 {
		t.Errorf("only %d of %d cells are within the claim", claimed, len(Cells()))
	}
}

// Without turns, tenants sharing an instance split it evenly whatever
// their shares: what the turns are for, and what the gate would miss if
// it judged the wrong instance.
func TestMIGWithoutTurnsIsEvenSplit(t *testing.T) {
	t.Parallel()
	c := Cell{Policy: enforce.Strict, Limits: []float64{0.3, 0.7}, Kernel: time.Millisecond, Queue: 2}
	r, err := RunMIG(c, MIGTimeSliced, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(r.Shares[0]-r.Shares[1]) > 0.02 {
		t.Errorf("time-sliced shares %.3f and %.3f, want about even", r.Shares[0], r.Shares[1])
	}
	real, err := RunMIG(c, Real, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(real.Shares[0]-0.3) > 0.02 || math.Abs(real.Shares[1]-0.7) > 0.02 {
		t.Errorf("shares under turns %.3f and %.3f, want 0.3 and 0.7", real.Shares[0], real.Shares[1])
	}
}
