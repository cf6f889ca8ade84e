package enforce

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

func newBareEnforcer(t *testing.T) *Enforcer {
	t.Helper()
	o := DefaultOptions()
	o.CgroupRoot, o.ProcRoot = t.TempDir(), t.TempDir()
	o.State = StateFile{Path: filepath.Join(t.TempDir(), "state.json")}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// A scrape never waits on an enforcement round: with the enforcer's lock
// held (as Apply holds it across kills, /proc reads, NVML calls and file
// writes), every reader the exporter uses still answers at once.
func TestReadersNeverWaitOnEnforcement(t *testing.T) {
	t.Parallel()
	e := newBareEnforcer(t)
	e.mu.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.Stats()
		_ = e.Failures()
		_, _ = e.Tiers()
		_ = e.UnauthorizedStats()
		_, _ = e.DriverStats()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("a reader waited on the enforcer's lock")
	}
	e.mu.Unlock()
	<-done
}

// Offer never blocks, and a loop that falls behind applies only the latest
// snapshot.
func TestOfferLatestWins(t *testing.T) {
	t.Parallel()
	e := newBareEnforcer(t)
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		e.Offer(&node.Snapshot{Time: t0.Add(time.Duration(i) * time.Second)}) // no loop yet: never blocks
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.mu.Lock()
		last := e.last
		e.mu.Unlock()
		if !last.IsZero() {
			if want := t0.Add(2 * time.Second); !last.Equal(want) {
				t.Errorf("applied %s, want only the latest, %s", last, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the loop applied nothing")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// With MPS the compute throttle is off whatever Compute says (MPS limits
// set at Allocate hold compute, and a throttle would fight them), and the
// tier says so; the driver tier is only tried for a killing memory policy.
func TestTierRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		mps, compute  bool
		memory        MemoryPolicy
		wantCompute   string
		wantMemory    string
		wantThrottles bool
	}{
		{"default", false, true, MemoryKill, "freezer", "watchdog", true},
		{"mps", true, true, MemoryKill, "mps", "watchdog", false},
		{"compute off", false, false, MemoryLog, "none", "watchdog", false},
		{"nothing", false, false, MemoryOff, "none", "none", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			o.CgroupRoot, o.ProcRoot = t.TempDir(), t.TempDir()
			o.State = StateFile{Path: filepath.Join(t.TempDir(), "state.json")}
			o.MPS, o.Compute, o.Memory = tc.mps, tc.compute, tc.memory
			e, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if c, m := e.Tiers(); c != tc.wantCompute || m != tc.wantMemory {
				t.Errorf("Tiers() = %s, %s; want %s, %s", c, m, tc.wantCompute, tc.wantMemory)
			}
			if e.opts.Compute != tc.wantThrottles {
				t.Errorf("throttle on = %t, want %t", e.opts.Compute, tc.wantThrottles)
			}
		})
	}
	for _, memory := range []MemoryPolicy{MemoryLog, MemoryOff} {
		o := DefaultOptions()
		o.DriverMemoryLimits, o.Memory = true, memory
		if _, err := NewDriverTier(o, DriverOptions{}); !errors.Is(err, ErrDriverTierOff) {
			t.Errorf("driver tier with memory policy %s: %v, want ErrDriverTierOff", memory, err)
		}
	}
	o := DefaultOptions()
	if _, err := NewDriverTier(o, DriverOptions{}); !errors.Is(err, ErrDriverTierOff) {
		t.Errorf("driver tier not asked for: %v, want ErrDriverTierOff", err)
	}
}

// TestPlanDuties: the throttle's plan, decided from the snapshot alone. A
// container spanning two GPUs runs at the smaller of its duties (one
// freezer holds both); one on a GPU that could not be read gets no new
// plan (it keeps what it has); one without a cgroup is not planned at all.
func TestPlanDuties(t *testing.T) {
	t.Parallel()
	cg := func(id string) node.Cgroup { return node.Cgroup{ContainerID: id} }
	snap := &node.Snapshot{
		Devices: []node.Device{
			{Device: nvml.Device{UUID: "GPU-a"}, SampleOK: true, ProcessesOK: true, Sample: nvml.Sample{Utilization: 1}},
			{Device: nvml.Device{UUID: "GPU-b"}, SampleOK: true, ProcessesOK: true, Sample: nvml.Sample{Utilization: 1}},
		},
		Containers: []node.Container{
			// "wide" holds a small share of GPU-a and a large one of GPU-b.
			{Namespace: "ml", Pod: "wide", UUID: "GPU-a", ComputeLimitRatio: 0.1, SMUtilization: 0.9, Cgroup: cg("wide")},
			{Namespace: "ml", Pod: "wide", UUID: "GPU-b", ComputeLimitRatio: 0.9, SMUtilization: 0.9, Cgroup: cg("wide")},
			{Namespace: "ml", Pod: "blind", UUID: "GPU-a", ComputeLimitRatio: 0.1, SMUtilization: 0.9, Cgroup: cg("blind"), Blind: true},
			{Namespace: "ml", Pod: "new", UUID: "GPU-a", ComputeLimitRatio: 0.1},
		},
	}
	r := readRound(snap, func(node.Container) Policy { return Strict })
	if _, ok := r.seen["new"]; ok || len(r.seen) != 2 || !r.hold["blind"] {
		t.Fatalf("round = %+v", r)
	}
	ctrl := map[string]*Controller{"GPU-a": NewController(100 * time.Millisecond), "GPU-b": NewController(100 * time.Millisecond)}
	plans := planDuties(ctrl, NewTurns(100*time.Millisecond), r, time.Second)
	if _, ok := plans["blind"]; ok {
		t.Error("a container on a blind GPU was given a new plan")
	}
	wide, ok := plans["wide"]
	if !ok || wide.Duty > 0.2 {
		t.Errorf("wide = %+v, want the small duty of GPU-a (about its 0.1 share), not GPU-b's", wide)
	}
}

// TestFailedFinalThawStaysRecorded: a throttle whose last thaw fails (the
// control file cannot be written) left its cgroup frozen and dropped from
// the record before; now the cgroup stays in the record and is thawed
// again every round until the thaw takes.
func TestFailedFinalThawStaysRecorded(t *testing.T) {
	t.Parallel()
	e := newBareEnforcer(t)
	dir := t.TempDir()
	control := filepath.Join(dir, "cgroup.freeze")
	if err := os.Mkdir(control, 0o755); err != nil { // a write to it fails: EISDIR
		t.Fatal(err)
	}
	f := Freezer{File: control}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.freezers["c1"] = heldFreezer{Freezer: f}
	e.throttles["c1"] = StartThrottle(f, Plan{Duty: 0.5, Period: 100 * time.Millisecond}, e.epoch, nil)
	<-e.throttles["c1"].Done()
	e.stop("c1")
	e.record()
	recorded := func() []string {
		data, err := os.ReadFile(e.opts.State.Path)
		if err != nil {
			t.Fatal(err)
		}
		var files []string
		if err := json.Unmarshal(data, &files); err != nil {
			t.Fatal(err)
		}
		return files
	}
	if got := recorded(); !slices.Contains(got, control) {
		t.Fatalf("record after a failed thaw: %v, want it to keep %s", got, control)
	}
	e.thawAgain() // still failing: kept
	if _, ok := e.unthawed[control]; !ok {
		t.Fatal("a thaw that failed again was forgotten")
	}
	// The control file can be written now: the next round thaws it and
	// the record lets it go.
	if err := os.Remove(control); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(control, []byte("1"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.thawAgain()
	e.record()
	if got := recorded(); slices.Contains(got, control) {
		t.Errorf("record after the thaw took: %v, still keeps %s", got, control)
	}
	if v, _ := os.ReadFile(control); string(v) != "0" {
		t.Errorf("control file %q, want thawed (0)", v)
	}
}

// TestRawWritesAreBounded: at most n raw writes at once, none with n <= 0
// or no bound set; a released place is taken again.
func TestRawWritesAreBounded(t *testing.T) {
	t.Parallel()
	r := NewRawWrites(2)
	for i := range 2 {
		if !r.take() {
			t.Fatalf("place %d of 2 not given", i+1)
		}
	}
	if r.take() {
		t.Fatal("a third raw write allowed with two in flight")
	}
	r.release()
	if !r.take() {
		t.Fatal("a released place not taken again")
	}
	var none *RawWrites
	if NewRawWrites(0).take() || none.take() {
		t.Error("a raw write allowed with no places (GOMAXPROCS 1, or no bound)")
	}
}

// TestSharedInstancePlansTurns: containers whose use on a device cannot be
// measured (slices of a MIG instance several hold) are planned in turns,
// never by the controller, which would read their zero as idleness (a
// Burst container would run free); a container on a measured device beside
// them is still the controller's.
func TestSharedInstancePlansTurns(t *testing.T) {
	t.Parallel()
	cg := func(id string) node.Cgroup { return node.Cgroup{ContainerID: id} }
	mig := nvml.Sample{ProcessUtilizationUnsupported: true, UtilizationUnsupported: true}
	snap := &node.Snapshot{
		Devices: []node.Device{
			{Device: nvml.Device{UUID: "MIG-a"}, SampleOK: true, ProcessesOK: true, Sample: mig},
			{Device: nvml.Device{UUID: "GPU-b"}, SampleOK: true, ProcessesOK: true, Sample: nvml.Sample{Utilization: 1}},
		},
		Containers: []node.Container{
			{Namespace: "ml", Pod: "one", UUID: "MIG-a", ComputeLimitRatio: 0.25, ComputeUnmeasured: true, Cgroup: cg("one")},
			{Namespace: "ml", Pod: "three", UUID: "MIG-a", ComputeLimitRatio: 0.75, ComputeUnmeasured: true, Cgroup: cg("three")},
			{Namespace: "ml", Pod: "whole", UUID: "GPU-b", ComputeLimitRatio: 0.5, SMUtilization: 0.3, Cgroup: cg("whole")},
		},
	}
	r := readRound(snap, func(node.Container) Policy { return Burst })
	if !r.turns["MIG-a"] || r.turns["GPU-b"] {
		t.Fatalf("turns = %v, want the shared instance only", r.turns)
	}
	ctrl := map[string]*Controller{"MIG-a": NewController(100 * time.Millisecond), "GPU-b": NewController(100 * time.Millisecond)}
	plans := planDuties(ctrl, NewTurns(100*time.Millisecond), r, time.Second)
	one, three := plans["one"], plans["three"]
	if one.Duty != 0.25 || three.Duty != 0.75 || one.Period != 800*time.Millisecond || one.Period != three.Period {
		t.Errorf("turns one %+v and three %+v, want 25%% and 75%% of one 800ms period", one, three)
	}
	if runs := runsAt(map[string]Plan{"one": one, "three": three}, 100*time.Millisecond); len(runs) != 1 {
		t.Errorf("%v run at once", runs)
	}
	if w := plans["whole"]; w.Duty != 1 {
		t.Errorf("the whole-GPU container under its share = %+v, want it unthrottled", w)
	}
}
