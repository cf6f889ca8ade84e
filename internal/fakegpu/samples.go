package fakegpu

import (
	"sort"
	"time"
)

// SamplePeriod is the period over which the fake driver samples each
// process's utilization for the fake libnvidia-ml, as the real driver does
// (NVML documents 1/6 s to 1 s depending on the product).
const SamplePeriod = time.Second / 6

// sampleHistory is how many sample periods the fake driver keeps: 2 s,
// longer than a reader polling every second needs.
const sampleHistory = 12

// procSample is one process's utilization over one sample period, as
// nvmlDeviceGetProcessUtilization reports it.
type procSample struct {
	pid   int
	stamp int64 // end of the period, µs since the epoch
	util  int   // percent, truncated
}

// bins accumulates one GPU's served time into sample periods.
type bins struct {
	start   time.Time       // of the open period
	busy    map[int]float64 // pid -> ns served in the open period
	device  int             // the last closed period's device utilization, percent
	history [][]procSample  // closed periods, oldest first
}

func newBins(start time.Time) *bins {
	return &bins{start: start, busy: map[int]float64{}}
}

// add spreads what each process was served over [from, to) evenly across
// the sample periods that span covers, closing the periods it passes.
func (b *bins) add(from, to time.Time, served map[int]float64) {
	span := to.Sub(from)
	if span <= 0 {
		return
	}
	for t := from; t.Before(to); {
		end := b.start.Add(SamplePeriod)
		stop := end
		if to.Before(end) {
			stop = to
		}
		seg := stop.Sub(t)
		if seg > 0 {
			frac := float64(seg) / float64(span)
			for pid, ns := range served {
				b.busy[pid] += ns * frac
			}
		}
		t = t.Add(max(seg, 0))
		if !t.Before(end) {
			b.close(end)
		}
	}
}

// close ends the open period at end.
func (b *bins) close(end time.Time) {
	period := float64(SamplePeriod)
	out := make([]procSample, 0, len(b.busy))
	total := 0.0
	for pid, ns := range b.busy {
		total += ns
		out = append(out, procSample{pid: pid, stamp: end.UnixMicro(), util: int(min(100*ns/period, 100))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pid < out[j].pid })
	b.device = int(min(100*total/period, 100))
	b.history = append(b.history, out)
	if len(b.history) > sampleHistory {
		b.history = b.history[len(b.history)-sampleHistory:]
	}
	b.busy = map[int]float64{}
	b.start = end
}
