package enforce_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/enforce"
)

func TestWatchdogKillsNewestOverLimit(t *testing.T) {
	t.Parallel()
	// 2 of 10 slices of an H100 (81559 MiB): a 16311 MiB limit.
	s := startSetupWith(t, []int{2}, []float64{0.05}, true, func(o *enforce.Options) { o.Compute = false })
	older := s.AddProcess(t, 0, 10240)
	time.Sleep(time.Second) // seen and settled within the limit
	newer := s.AddProcess(t, 0, 8192)
	if !newer.Exited(10 * time.Second) {
		t.Fatal("the process that pushed the container over its memory limit was not killed")
	}
	if ws, ok := newer.Cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Errorf("newer process ended with %v, want SIGKILL", newer.Cmd.ProcessState)
	}
	if older.Exited(time.Second) {
		t.Error("the older process, within the limit on its own, was killed too")
	}
	var events, kills uint64
	for _, st := range s.Enforcer.Stats() {
		events += st.MemoryEvents
		kills += st.Kills
	}
	if events != 1 || kills != 1 {
		t.Errorf("memory events %d, kills %d; want 1 and 1", events, kills)
	}
}

func TestWatchdogLogPolicyOnlyCounts(t *testing.T) {
	t.Parallel()
	s := startSetupWith(t, []int{2}, []float64{0.05}, true, func(o *enforce.Options) { o.Compute = false; o.Memory = enforce.MemoryLog })
	s.AddProcess(t, 0, 10240)
	over := s.AddProcess(t, 0, 8192)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var events uint64
		for _, st := range s.Enforcer.Stats() {
			events += st.MemoryEvents
		}
		if events == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("overrun never counted under the log policy")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if over.Exited(time.Second) {
		t.Error("a process was killed under the log policy")
	}
}

// BenchmarkMemoryOverrunToKill measures the time from starting a process
// that takes its container over its GPU memory limit to its death, with a
// 250 ms sample interval. The process publishes its memory within 20 ms of
// starting; the rest is sampling and the kill.
func BenchmarkMemoryOverrunToKill(b *testing.B) {
	s := startSetupWith(b, []int{2}, []float64{0.05}, true, func(o *enforce.Options) { o.Compute = false })
	s.AddProcess(b, 0, 10240)
	time.Sleep(time.Second)
	var worst, total time.Duration
	n := 0
	for b.Loop() {
		start := time.Now()
		p := s.AddProcess(b, 0, 8192)
		if !p.Exited(10 * time.Second) {
			b.Fatal("overrun not killed within 10s")
		}
		d := time.Since(start)
		worst, total, n = max(worst, d), total+d, n+1
		time.Sleep(300 * time.Millisecond) // let the next sample see the container back under
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(n), "mean-ms")
	b.ReportMetric(float64(worst.Milliseconds()), "max-ms")
	b.ReportMetric(worst.Seconds()/0.25, "max-intervals")
}
