package exporter

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"

	"slices"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// bigSnapshot is a busy 8-GPU node at the scale of make bench-node: 8 GPUs
// × 25 slices, 200 single-slice containers, each throttled by enforcement.
func bigSnapshot() *node.Snapshot {
	s := snapshot()
	s.Devices, s.Containers = nil, nil
	for g := range 8 {
		uuid := fmt.Sprintf("GPU-%08d-0000-4000-8000-000000000000", g)
		s.Devices = append(s.Devices, node.Device{
			Device:   nvml.Device{UUID: uuid, Index: g, Model: "NVIDIA H100 80GB HBM3", MemoryBytes: 85520809984, PCIBusID: fmt.Sprintf("00000000:%02X:00.0", g)},
			Sample:   nvml.Sample{UUID: uuid, Utilization: 0.8, MemoryUsedBytes: 5e10, TemperatureCelsius: 65, PowerWatts: 500, EnergyJoules: 1e7, SMClockHertz: 1.98e9},
			SampleOK: true, Health: nvml.Health{UUID: uuid, Healthy: true}, XIDs: map[uint64]uint64{}, Slices: 25, Allocated: 25,
		})
		for c := range 25 {
			s.Containers = append(s.Containers, node.Container{
				Namespace: fmt.Sprintf("team-%d", c%4), Pod: fmt.Sprintf("job-%d-%d", g, c), Container: "main", UUID: uuid, Index: g,
				Slices: 1, MemoryLimitBytes: 3.2e9, ComputeLimitRatio: 0.04, MemoryUsedBytes: 5e8, SMUtilization: 0.03,
				BusySeconds: 1234.5, LastActive: time.Unix(1700000000, 0), Processes: 1,
				Cgroup: node.Cgroup{ContainerID: fmt.Sprintf("%064x", g*25+c+1)},
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
			snap := bigSnapshot()
			stats := map[string]enforce.Stats{}
			for _, c := range snap.Containers {
				stats[c.Cgroup.Key()] = enforce.Stats{Throttled: 90 * time.Second, Duty: 0.4, Compute: enforce.ReasonEnforced, Memory: enforce.ReasonEnforced}
			}
			bi := info
			bi.Enforcement = statsOf(stats)
			h := Handler(NewExposition(fixed{snap}, bi), func() any { return tc.key(n) }, func() bool { return true }, slog.New(slog.DiscardHandler))
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			req.Header.Set("Accept-Encoding", "gzip") // as Prometheus asks
			samples := make([]time.Duration, 0, b.N)
			var size int
			b.ReportAllocs()
			for b.Loop() {
				n++
				rec := &discard{header: http.Header{}}
				start := time.Now()
				h.ServeHTTP(rec, req)
				samples = append(samples, time.Since(start))
				if rec.code != 0 && rec.code != http.StatusOK {
					b.Fatalf("status %d", rec.code)
				}
				size = rec.n
			}
			slices.Sort(samples)
			b.ReportMetric(float64(samples[len(samples)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(samples[len(samples)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(size)/1024, "KiB/scrape")
		})
	}
}

// statsOf is enforcement that throttles every container.
type statsOf map[string]enforce.Stats

func (s statsOf) Stats() map[string]enforce.Stats        { return s }
func (s statsOf) Generation() uint64                     { return 1 }
func (statsOf) DriverStats() (enforce.DriverStats, bool) { return enforce.DriverStats{}, false }
func (statsOf) Failures() uint64                         { return 0 }
func (statsOf) Tiers() (string, string)                  { return "freezer", "watchdog" }
func (statsOf) Node() enforce.NodeState {
	return enforce.NodeState{Compute: enforce.ReasonEnforced, Memory: enforce.ReasonEnforced}
}

// discard is a ResponseWriter that counts the body and keeps nothing, as a
// network connection: what the benchmark allocates is the handler's.
type discard struct {
	header http.Header
	code   int
	n      int
}

func (d *discard) Header() http.Header         { return d.header }
func (d *discard) WriteHeader(code int)        { d.code = code }
func (d *discard) Write(p []byte) (int, error) { d.n += len(p); return len(p), nil }
