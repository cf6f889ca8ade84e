package gpumodel

import (
	"math"
	"testing"
	"time"
)

func newGPU(t *testing.T, cfg Config) *GPU {
	t.Helper()
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func share(g *GPU, pid int, over time.Duration) float64 {
	_, ex := g.Completed(pid)
	return float64(ex) / float64(over)
}

func TestShares(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	// Two greedy contexts split the GPU evenly, less one switch per slice.
	perSwitch := float64(cfg.TimeSlice) / float64(cfg.TimeSlice+cfg.SwitchCost)
	for name, tc := range map[string]struct {
		procs []Process
		want  []float64
	}{
		"alone greedy":          {[]Process{{Kernel: time.Millisecond, QueueDepth: 2, Demand: 1}}, []float64{1}},
		"alone 30 percent":      {[]Process{{Kernel: time.Millisecond, QueueDepth: 2, Demand: 0.3}}, []float64{0.3}},
		"two greedy short":      {[]Process{{Kernel: time.Millisecond, QueueDepth: 2, Demand: 1}, {Kernel: time.Millisecond, QueueDepth: 2, Demand: 1}}, []float64{perSwitch / 2, perSwitch / 2}},
		"two greedy preempted":  {[]Process{{Kernel: 20 * time.Millisecond, QueueDepth: 8, Demand: 1}, {Kernel: 20 * time.Millisecond, QueueDepth: 8, Demand: 1}}, []float64{perSwitch / 2, perSwitch / 2}},
		"greedy and 20 percent": {[]Process{{Kernel: time.Millisecond, QueueDepth: 2, Demand: 1}, {Kernel: time.Millisecond, QueueDepth: 2, Demand: 0.2}}, []float64{0.78, 0.2}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			g := newGPU(t, cfg)
			for i, p := range tc.procs {
				if err := g.Start(i+1, p); err != nil {
					t.Fatal(err)
				}
			}
			g.Advance(10 * time.Second)
			for i, want := range tc.want {
				if got := share(g, i+1, 10*time.Second); math.Abs(got-want) > 0.015 {
					t.Errorf("process %d: share %.4f, want %.4f", i+1, got, want)
				}
			}
		})
	}
}

// A frozen process submits nothing, but its queued kernels still run: the
// GPU stays busy until the queue drains.
func TestFrozenQueueDrains(t *testing.T) {
	t.Parallel()
	g := newGPU(t, DefaultConfig())
	if err := g.Start(1, Process{Kernel: 20 * time.Millisecond, QueueDepth: 8, Demand: 1}); err != nil {
		t.Fatal(err)
	}
	g.Advance(time.Second)
	g.SetFrozen(1, true)
	before, _ := g.Completed(1)
	g.Advance(time.Second + 100*time.Millisecond)
	mid, _ := g.Completed(1)
	g.Advance(2 * time.Second)
	after, _ := g.Completed(1)
	if mid-before != 5 {
		t.Errorf("kernels finished in the first 100ms frozen: %d, want 5 (the queue keeps running)", mid-before)
	}
	if after-before != 8 {
		t.Errorf("kernels finished while frozen: %d, want the 8 queued and no more", after-before)
	}
	g.SetFrozen(1, false)
	g.Advance(3 * time.Second)
	if done, _ := g.Completed(1); done-after != 50 {
		t.Errorf("kernels finished after the thaw: %d, want 50", done-after)
	}
}

// Readings lag: a sample period is reported only once it has ended, as a
// truncated integer percent; the device reading is the last period's.
func TestReadingsLagAndTruncate(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.SamplePeriod = 100 * time.Millisecond
	g := newGPU(t, cfg)
	if err := g.Start(7, Process{Kernel: time.Millisecond, QueueDepth: 1, Demand: 0.333}); err != nil {
		t.Fatal(err)
	}
	g.Advance(99 * time.Millisecond)
	if s := g.ProcessUtilization(0); len(s) != 0 {
		t.Fatalf("samples before the first period ended: %v", s)
	}
	g.Advance(100 * time.Millisecond)
	s := g.ProcessUtilization(0)
	if len(s) != 1 || s[0].PID != 7 || s[0].TimeStamp != 100_000 || s[0].SMUtil != 33 {
		t.Fatalf("samples after one period: %+v, want pid 7 at 100000µs with 33%%", s)
	}
	if u := g.Utilization(); u != 33 {
		t.Errorf("device utilization %d, want 33", u)
	}
	g.Advance(300 * time.Millisecond)
	if got := g.ProcessUtilization(100_000); len(got) != 2 {
		t.Errorf("samples after 100000µs: %+v, want 2", got)
	}
}

// The driver keeps a bounded history: a reader that polls too rarely
// loses the oldest samples.
func TestHistoryBounded(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.History = 3
	g := newGPU(t, cfg)
	if err := g.Start(1, Process{Kernel: time.Millisecond, QueueDepth: 1, Demand: 1}); err != nil {
		t.Fatal(err)
	}
	g.Advance(10 * cfg.SamplePeriod)
	if s := g.ProcessUtilization(0); len(s) != 3 {
		t.Errorf("samples kept: %d, want 3", len(s))
	}
}

// A process that exits drops its queue; another takes the whole GPU.
func TestExit(t *testing.T) {
	t.Parallel()
	g := newGPU(t, DefaultConfig())
	for pid := 1; pid <= 2; pid++ {
		if err := g.Start(pid, Process{Kernel: 20 * time.Millisecond, QueueDepth: 8, Demand: 1}); err != nil {
			t.Fatal(err)
		}
	}
	g.Advance(time.Second)
	g.Exit(1)
	k1, _ := g.Completed(1)
	_, before := g.Completed(2)
	g.Advance(2 * time.Second)
	if k, _ := g.Completed(1); k != k1 {
		t.Errorf("an exited process finished %d more kernels", k-k1)
	}
	if _, after := g.Completed(2); after-before < 990*time.Millisecond {
		t.Errorf("the remaining process ran %s of the second after the exit", after-before)
	}
}

func TestValidation(t *testing.T) {
	t.Parallel()
	bad := DefaultConfig()
	bad.SwitchCost = bad.TimeSlice
	if _, err := New(bad); err == nil {
		t.Error("a switch cost as long as the time slice was accepted")
	}
	g := newGPU(t, DefaultConfig())
	for name, p := range map[string]Process{
		"no kernel":  {QueueDepth: 1, Demand: 1},
		"no queue":   {Kernel: time.Millisecond, Demand: 1},
		"demand 0":   {Kernel: time.Millisecond, QueueDepth: 1},
		"demand 1.5": {Kernel: time.Millisecond, QueueDepth: 1, Demand: 1.5},
		"demand NaN": {Kernel: time.Millisecond, QueueDepth: 1, Demand: math.NaN()},
	} {
		if err := g.Start(1, p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := g.Start(1, Process{Kernel: time.Millisecond, QueueDepth: 1, Demand: 1}); err != nil {
		t.Fatal(err)
	}
	if err := g.Start(1, Process{Kernel: time.Millisecond, QueueDepth: 1, Demand: 1}); err == nil {
		t.Error("a second process with the same pid was accepted")
	}
}

// Instances are isolated: a greedy context on one instance runs as if
// alone however busy the other is, while contexts on one instance
// time-slice it. The GPM counter of each instance is the work of its own
// contexts only.
func TestMIGInstancesAreIsolated(t *testing.T) {
	t.Parallel()
	m, err := NewMIG(DefaultConfig(), 2)
	if err != nil {
		t.Fatal(err)
	}
	greedy := Process{Kernel: time.Millisecond, QueueDepth: 2, Demand: 1}
	for pid, inst := range map[int]int{1: 0, 2: 1, 3: 1} {
		if err := m.Instance(inst).Start(pid, greedy); err != nil {
			t.Fatal(err)
		}
	}
	m.Advance(10 * time.Second)
	if got := share(m.Instance(0), 1, 10*time.Second); math.Abs(got-1) > 0.01 {
		t.Errorf("the lone context on instance 0 got %.3f of it, want 1", got)
	}
	for _, pid := range []int{2, 3} {
		if got := share(m.Instance(1), pid, 10*time.Second); math.Abs(got-0.49) > 0.015 {
			t.Errorf("context %d sharing instance 1 got %.3f of it, want about half", pid, got)
		}
	}
	_, a := m.Instance(1).Completed(2)
	_, b := m.Instance(1).Completed(3)
	if busy := m.Instance(1).Busy(); busy != a+b {
		t.Errorf("instance 1's GPM counter %s, want its contexts' work %s", busy, a+b)
	}
	if _, err := NewMIG(DefaultConfig(), 0); err == nil {
		t.Error("a GPU in MIG mode with no instance was accepted")
	}
}
