package fakegpu

import (
	"testing"
	"time"
)

// The fake driver keeps one sample per process and sample period, as the
// real one does, so a reader that polls every second sees the average of
// the whole second, not the last write's window.
func TestSamplePeriods(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	b := newBins(t0)
	// Process 1 is served half of every window; process 2 only in the
	// first quarter of the second.
	for i := range 20 {
		from, to := t0.Add(time.Duration(i)*50*time.Millisecond), t0.Add(time.Duration(i+1)*50*time.Millisecond)
		served := map[int]float64{1: float64(25 * time.Millisecond)}
		if i < 5 {
			served[2] = float64(50 * time.Millisecond)
		}
		b.add(from, to, served)
	}
	if len(b.history) != 6 {
		t.Fatalf("%d periods closed in 1 s, want 6", len(b.history))
	}
	var sum1, sum2 int
	for i, period := range b.history {
		want := t0.Add(time.Duration(i+1) * SamplePeriod).UnixMicro()
		for _, s := range period {
			if s.stamp != want {
				t.Errorf("period %d stamped %d, want %d", i, s.stamp, want)
			}
			switch s.pid {
			case 1:
				sum1 += s.util
			case 2:
				sum2 += s.util
			}
		}
	}
	// 50 % and 25 % over the second, less truncation.
	if avg := sum1 / 6; avg < 48 || avg > 50 {
		t.Errorf("process 1 averages %d%%, want 50", avg)
	}
	if avg := sum2 / 6; avg < 23 || avg > 25 {
		t.Errorf("process 2 averages %d%%, want 25", avg)
	}
	for range 20 {
		b.close(b.start.Add(SamplePeriod))
	}
	if len(b.history) != sampleHistory {
		t.Errorf("%d periods kept, want %d", len(b.history), sampleHistory)
	}
}
