package sampler_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/sampler"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// BenchmarkSampleOnce measures one sample of a busy 8-GPU node: 8 fake
// H100s cut in 16, 32 containers holding slices, read through the real
// pod-resources client and the kubelet checkpoint.
func BenchmarkSampleOnce(b *testing.B) {
	kn := kubeletstub.StartNode(b, fakegpu.PresetConfig("H100-80GB", 8), 16)
	ctx := context.Background()
	for i := range 32 {
		if _, err := kn.Connection.Allocate(ctx, fmt.Sprintf("team/job-%d", i), "main", 4); err != nil {
			b.Fatal(err)
		}
	}
	o := podresources.DefaultOptions()
	o.Socket = kn.PodResourcesSocket
	client, err := podresources.New(o)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	opts := sampler.DefaultOptions()
	opts.ProcRoot = b.TempDir()
	opts.PluginDir = kn.Dir
	s, err := sampler.New(kn.Devices, kn.Layout, kn.GPU, client, kn.Health, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.SampleOnce(ctx)
	}
	snap := s.Snapshot()
	if len(snap.Containers) != 32 || len(snap.Errors) != 0 {
		b.Fatalf("sample saw %d containers, errors %v", len(snap.Containers), snap.Errors)
	}
	b.ReportMetric(float64(snap.Duration.Microseconds()), "last-sample-µs")
}
