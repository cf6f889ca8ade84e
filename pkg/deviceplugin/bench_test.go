package deviceplugin_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// quantile is the q-quantile of samples, in microseconds; it sorts them.
func quantile(samples []time.Duration, q float64) float64 {
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return float64(samples[int(q*float64(len(samples)-1))].Nanoseconds()) / 1e3
}

// reportLatency adds p50 and p99 of the samples, in microseconds.
func reportLatency(b *testing.B, samples []time.Duration) {
	b.Helper()
	if len(samples) == 0 {
		return
	}
	b.ReportMetric(quantile(samples, 0.50), "p50-µs")
	b.ReportMetric(quantile(samples, 0.99), "p99-µs")
}

// BenchmarkAllocateGRPC measures Allocate as the kubelet calls it: a real
// gRPC round trip over a unix socket to the plugin serving 4 GPUs × 8 slices.
// Each iteration also times a bare GetDevicePluginOptions round trip on the
// same connection, the transport's floor under the same load: p50-ratio,
// Allocate's p50 over the floor's, is what the machine does not change
// (goal ≤ 1.2).
func BenchmarkAllocateGRPC(b *testing.B) {
	for _, n := range []int{1, 4} {
		b.Run(fmt.Sprintf("slices=%d", n), func(b *testing.B) {
			e := benchEnv(b, 4, 8)
			p, err := e.kubelet.WaitPlugin(context.Background(), resource)
			if err != nil {
				b.Fatal(err)
			}
			ids := make([]string, n)
			for i := range n {
				ids[i] = vgpu.SliceID{UUID: e.devs[0].UUID, Index: i}.String()
			}
			req := &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}}
			ctx := context.Background()
			samples, floor := make([]time.Duration, 0, b.N), make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				if _, err := p.Client().GetDevicePluginOptions(ctx, &pluginapi.Empty{}); err != nil {
					b.Fatal(err)
				}
				mid := time.Now()
				if _, err := p.Client().Allocate(ctx, req); err != nil {
					b.Fatal(err)
				}
				floor, samples = append(floor, mid.Sub(start)), append(samples, time.Since(mid))
			}
			reportLatency(b, samples)
			f := quantile(floor, 0.50)
			b.ReportMetric(f, "floor-p50-µs")
			b.ReportMetric(quantile(samples, 0.50)/f, "p50-ratio")
		})
	}
}

// BenchmarkGetPreferredAllocationInProcess measures the plugin's answer
// without transport on 8 GPUs × 16 slices, half of them taken.
func BenchmarkGetPreferredAllocationInProcess(b *testing.B) {
	e := benchEnv(b, 8, 16)
	var avail []string
	for i, s := range e.layout.SliceIDs() {
		if i%2 == 0 || s.Index > 8 {
			avail = append(avail, s.String())
		}
	}
	req := &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
		AvailableDeviceIDs: avail, AllocationSize: 4,
	}}}
	ctx := context.Background()
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if _, err := e.plugin.GetPreferredAllocation(ctx, req); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, time.Since(start))
	}
	reportLatency(b, samples)
}

// benchEnv is a plugin on fake H100s with a kubelet stand-in, as in the tests.
func benchEnv(b *testing.B, gpus, slices int) *env {
	b.Helper()
	return newEnv(b, setup{node: fakegpu.PresetConfig("H100-80GB", gpus), slices: slices})
}
