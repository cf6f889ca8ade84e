package dra_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/gpuslice/gpuslice/pkg/dra"
)

// BenchmarkPrepare measures Prepare and Unprepare of one claim on a node
// of 8 GPUs × 8 slices with 7 other claims prepared: the grants, the
// ledger, the CDI spec and the record, each written and synced to disk
// (the temporary directory's file system) as the driver does.
func BenchmarkPrepare(b *testing.B) {
	l, devs := node(b, 8, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	dir := b.TempDir()
	minor := map[string]int{}
	for _, d := range devs {
		minor[d.UUID] = d.Minor
	}
	o := dra.PreparerOptions{Pool: pool, Layout: l, CDIDir: filepath.Join(dir, "cdi"), StatePath: filepath.Join(dir, "prepared.json"), Nodes: dra.Nodes{DevRoot: "/dev", Minor: minor}}
	if err := os.Mkdir(o.CDIDir, 0o750); err != nil {
		b.Fatal(err)
	}
	p, err := dra.NewPreparer(o)
	if err != nil {
		b.Fatal(err)
	}
	for i := range 7 {
		if _, err := p.Prepare(claimOf(types.UID(fmt.Sprintf("other-%d", i)), share(dra.DeviceName(i), 4, 40))); err != nil {
			b.Fatal(err)
		}
	}
	c := claimOf("bench", share("gpu-7", 3, 30))
	var prep, unprep []time.Duration
	for b.Loop() {
		start := time.Now()
		if _, err := p.Prepare(c); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := p.Unprepare(c.UID); err != nil {
			b.Fatal(err)
		}
		prep, unprep = append(prep, mid.Sub(start)), append(unprep, time.Since(mid))
	}
	report(b, "prepare", prep)
	report(b, "unprepare", unprep)
}

// report adds p50 and p99 of the samples, in microseconds.
func report(b *testing.B, what string, samples []time.Duration) {
	b.Helper()
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	at := func(q float64) float64 { return float64(samples[int(q*float64(len(samples)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(at(0.50), what+"-p50-µs")
	b.ReportMetric(at(0.99), what+"-p99-µs")
}
