package nvml

import (
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// gpmMinInterval is the shortest interval GPM measures over: the driver
// refreshes its counters every 100 ms, so two samples closer than that
// measure nothing.
const gpmMinInterval = 100 * time.Millisecond

// gpmReader is one MIG instance's GPU performance monitoring: the last
// sample of its counters, the SM utilization measured up to it, and the
// buffers NVML fills.
type gpmReader struct {
	prev, cur gonvml.GpmSample
	at        time.Time // when prev was taken; zero before the first
	util      float64
	measured  bool // util holds a measurement
	// unsupported: the GPU has no GPM; nothing is asked again.
	unsupported bool
}

// instanceUtilization measures a MIG instance's SM utilization with GPM
// (Hopper and later), over the interval since the previous call for the
// instance, from the instance's own handle. ok is false where the GPU
// has no GPM, on an instance's first call (one sample measures nothing)
// and when a GPM call fails: its compute is then unmeasured, never a
// zero.
func (n *NVML) instanceUtilization(d gonvml.Device, uuid string) (util float64, ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r := n.gpm[uuid]
	if r != nil && r.unsupported {
		return 0, false
	}
	if r == nil {
		// Asked once per instance: a GPU's GPM support does not change.
		if sup, ret := d.GpmQueryDeviceSupport(); ret != gonvml.SUCCESS || sup.IsSupportedDevice == 0 {
			n.gpm[uuid] = &gpmReader{unsupported: true}
			return 0, false
		}
		var ret1, ret2 gonvml.Return
		r = &gpmReader{}
		r.prev, ret1 = n.lib.GpmSampleAlloc()
		r.cur, ret2 = n.lib.GpmSampleAlloc()
		if ret1 != gonvml.SUCCESS || ret2 != gonvml.SUCCESS {
			r.free()
			return 0, false
		}
		n.gpm[uuid] = r
	}
	now := n.opts.Now()
	if !r.at.IsZero() && now.Sub(r.at) < gpmMinInterval {
		return r.util, r.measured
	}
	if ret := d.GpmSampleGet(r.cur); ret != gonvml.SUCCESS {
		// The instance may be gone; a new one never reuses its UUID.
		r.free()
		delete(n.gpm, uuid)
		return 0, false
	}
	first := r.at.IsZero()
	r.prev, r.cur, r.at = r.cur, r.prev, now
	if first {
		return 0, false
	}
	get := &gonvml.GpmMetricsGetType{NumMetrics: 1, Sample1: r.cur, Sample2: r.prev}
	get.Metrics[0].MetricId = uint32(gonvml.GPM_METRIC_SM_UTIL)
	if ret := n.lib.GpmMetricsGet(get); ret != gonvml.SUCCESS || get.Metrics[0].NvmlReturn != uint32(gonvml.SUCCESS) {
		r.measured = false
		return 0, false
	}
	r.util, r.measured = min(max(get.Metrics[0].Value/100, 0), 1), true
	return r.util, true
}

// free releases the reader's sample buffers.
func (r *gpmReader) free() {
	for _, s := range []gonvml.GpmSample{r.prev, r.cur} {
		if s != nil {
			_ = s.Free()
		}
	}
}

// closeGPM releases every instance's GPM buffers.
func (n *NVML) closeGPM() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for uuid, r := range n.gpm {
		r.free()
		delete(n.gpm, uuid)
	}
}
