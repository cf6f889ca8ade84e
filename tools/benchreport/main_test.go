package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func parse(t *testing.T, path string) *Raw {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	raw, err := ParseRaw(f)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestRenderFromRaw: every figure comes from the raw output, medians of
// repeated lines, goals judged.
func TestRenderFromRaw(t *testing.T) {
	raw := parse(t, "testdata/raw.txt")
	if v, _ := raw.Value("BenchmarkAllocateGRPC/slices=1", "p50-µs"); v != 48.57 {
		t.Errorf("median of two lines = %v, want 48.57", v)
	}
	if v, _ := raw.Line("sensitivity", "defaults worst"); v != "policy=strict tenants=2 limits=30/70 kernel=20 queue=2" {
		t.Errorf("quoted value = %q", v)
	}
	page, err := Render(raw, fragTable, parse(t, "testdata/scale.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| node scale: throttling all 200 containers, strict | ≤ 5.00 % of a core | 12.10 % of a core | **no** |",
		"| re-registration after kubelet.sock is recreated: p50 | ≤ 20.0 ms | 5.0 ms | yes |",
		"| API requests of one agent in steady state, per minute | ≤ 2.00 | 0.36 | yes |",
		"Machine: 2 vCPU Intel Xeon",
		"BenchmarkEvaluationCycle-2   20",
		"| device plugin, --span=fewest | 3 |",
		"| quota controller cycle at 1,000 nodes, recording rules: p99 | ≤ 1000 ms | 250 ms | yes |",
		"| 1000 | off | 12 | 4773 ms | **5000 ms** | 5049 ms | 7 | 14615700 (9000) | 60000000 (**over Prometheus' default `--query.max-samples`: refused**) | 60 MiB |",
		"| 1000 over 100 (×10.00) | on | ×10.00 | ×10.00 | ×10.00 | ×2.00 |",
	} {
		if !strings.Contains(string(page), want) {
			t.Errorf("the page lacks %q", want)
		}
	}
}

// TestMissingFigureFails: a figure the run did not produce is an error,
// never a stale number.
func TestMissingFigureFails(t *testing.T) {
	data, err := os.ReadFile("testdata/raw.txt")
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(l, "BenchmarkFreezerTransitions") {
			kept = append(kept, l)
		}
	}
	raw, err := ParseRaw(strings.NewReader(strings.Join(kept, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	scale := parse(t, "testdata/scale.txt")
	if _, err := Render(raw, fragTable, scale); err == nil || !strings.Contains(err.Error(), "BenchmarkFreezerTransitions") {
		t.Errorf("Render without a figure = %v, want an error naming it", err)
	}
	if _, err := Render(parse(t, "testdata/raw.txt"), "", scale); err == nil || !strings.Contains(err.Error(), "make fragmentation") {
		t.Errorf("Render without the fragmentation table = %v, want an error naming make fragmentation", err)
	}
	empty, _ := ParseRaw(strings.NewReader("# date: 2026-12-07\n"))
	if _, err := Render(parse(t, "testdata/raw.txt"), fragTable, empty); err == nil || !strings.Contains(err.Error(), "make bench-scale") {
		t.Errorf("Render without make bench-scale's lines = %v, want an error naming it", err)
	}
}

// fragTable is a make fragmentation output.
const fragTable = "Seed 1: ...\n\n| path | straddled GPUs |\n|---|---|\n| device plugin, --span=fewest | 3 |\n"

// TestPageIsGenerated: docs/benchmarks.md is what its committed raw
// output renders to.
func TestPageIsGenerated(t *testing.T) {
	raw := parse(t, "../../docs/benchmarks-raw.txt")
	frag, err := os.ReadFile("../../docs/fragmentation-raw.txt")
	if err != nil {
		t.Fatal(err)
	}
	want, err := Render(raw, string(frag), parse(t, "../../docs/scale-raw.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../../docs/benchmarks.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("docs/benchmarks.md is not what docs/benchmarks-raw.txt and docs/fragmentation-raw.txt render to: run make bench-report (or make docs after editing the template)")
	}
}
