package exporter

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/sampler"
)

// bigSnapshot is a busy 8-GPU node: 8 GPUs × 16 slices, 64 containers.
func bigSnapshot() *sampler.Snapshot {
	s := snapshot()
	s.Devices, s.Containers = nil, nil
	for g := range 8 {
		uuid := fmt.Sprintf("GPU-%08d-0000-4000-8000-000000000000", g)
		s.Devices = append(s.Devices, sampler.Device{
			Device:   nvml.Device{UUID: uuid, Index: g, Model: "NVIDIA H100 80GB HBM3", MemoryBytes: 85520809984, PCIBusID: fmt.Sprintf("00000000:%02X:00.0", g)},
			Sample:   nvml.Sample{UUID: uuid, Utilization: 0.8, MemoryUsedBytes: 5e10, TemperatureCelsius: 65, PowerWatts: 500, EnergyJoules: 1e7, SMClockHertz: 1.98e9},
			SampleOK: true, Health: nvml.Health{UUID: uuid, Healthy: true}, XIDs: map[uint64]uint64{}, Slices: 16, Allocated: 16,
		})
		for c := range 8 {
			s.Containers = append(s.Containers, sampler.Container{
				Namespace: fmt.Sprintf("team-%d", c%4), Pod: fmt.Sprintf("job-%d-%d", g, c), Container: "main", GPU: uuid, Index: g,
				Slices: 2, MemoryLimitBytes: 1e10, ComputeLimitRatio: 0.125, MemoryUsedBytes: 5e9, SMUtilization: 0.1,
				BusySeconds: 1234.5, LastActive: time.Unix(1700000000, 0), Processes: 1,
			})
		}
	}
	return s
}

// BenchmarkScrape measures one /metrics request on a busy 8-GPU node, the
// whole HTTP handler included.
func BenchmarkScrape(b *testing.B) {
	// A new sample for every scrape (the worst case: a render each time),
	// and the steady state (scrapes between samples share one render).
	for _, tc := range []struct {
		name string
		key  func(n int) any
	}{{"render-each-scrape", func(n int) any { return n }}, {"between-samples", func(int) any { return 0 }}} {
		b.Run(tc.name, func(b *testing.B) {
			n := 0
			h := Handler(NewRegistry(fixed{bigSnapshot()}, info), func() any { return tc.key(n) }, func() bool { return true }, slog.New(slog.DiscardHandler))
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			samples := make([]time.Duration, 0, b.N)
			var size int
			b.ReportAllocs()
			for b.Loop() {
				n++
				rec := httptest.NewRecorder()
				start := time.Now()
				h.ServeHTTP(rec, req)
				samples = append(samples, time.Since(start))
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d", rec.Code)
				}
				size = rec.Body.Len()
			}
			slices.Sort(samples)
			b.ReportMetric(float64(samples[len(samples)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(samples[len(samples)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(size)/1024, "KiB/scrape")
		})
	}
}
