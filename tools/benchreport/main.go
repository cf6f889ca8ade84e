// Command benchreport writes docs/benchmarks.md from the raw output of one
// benchmark run (make bench-report): every figure in the page comes from
// that output, each goal is judged against it, and the output itself is
// appended. A figure the run did not produce fails the report rather
// than being left stale.
package main

import (
	"bytes"
	_ "embed" // the page's template
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"text/template"
)

//go:embed benchmarks.md.tmpl
var pageTemplate string

// Goal is a target a benchmark figure is judged against.
type Goal struct {
	What  string
	Bench string // a benchmark name, or "node" for make bench-node's line
	Unit  string // the metric's unit, or the node line's key
	Max   float64
	// Show formats the measured figure for the table.
	Show string
}

// Goals are the targets docs/benchmarks.md reports on.
var Goals = []Goal{
	{"Allocate over gRPC, 1 slice: p50", "BenchmarkAllocateGRPC/slices=1", "p50-µs", 100, "%.1f µs"},
	{"Allocate p50 over a bare GetDevicePluginOptions round trip, 1 slice", "BenchmarkAllocateGRPC/slices=1", "p50-ratio", 1.2, "%.2f"},
	{"Allocate p50 over a bare GetDevicePluginOptions round trip, 4 slices", "BenchmarkAllocateGRPC/slices=4", "p50-ratio", 1.2, "%.2f"},
	{"GetPreferredAllocation in-process, 8 GPUs × 16 slices: p50", "BenchmarkGetPreferredAllocationInProcess", "p50-µs", 50, "%.1f µs"},
	{"exec to registered with the kubelet: p50", "BenchmarkExecToRegistered", "p50-ms", 30, "%.1f ms"},
	{"re-registration after kubelet.sock is recreated: p50", "BenchmarkReregisterAfterKubeletRestart", "p50-ms", 20, "%.1f ms"},
	{"agent RSS idle, 8 GPUs × 16 slices, everything on", "BenchmarkIdleRSS8GPUs", "max-rss-MiB", 25, "%.1f MiB"},
	{"/metrics in-process at 8 GPUs × 200 containers, rendered anew: p99", "BenchmarkScrape/render-each-scrape", "p99-µs", 5000, "%.0f µs"},
	{"/metrics in-process at 8 GPUs × 200 containers, rendered anew: allocated", "BenchmarkScrape/render-each-scrape", "B/op", 100 << 10, "%.0f B"},
	{"256 concurrent unread scrapes: RSS added", "BenchmarkRSSUnderHostileClients", "unread-scrapes-added-MiB", 20, "%.1f MiB"},
	{"node scale (8 × 200): /metrics over HTTP after a new sample, p99", "node", "scrape_p99_ms", 10, "%.2f ms"},
	{"node scale: sampler, burst (nothing throttled)", "node", "sampler_cpu_pct", 1, "%.2f %% of a core"},
	{"node scale: throttling all 200 containers, strict", "node", "throttle_cpu_pct", 5, "%.2f %% of a core"},
	{"node scale: RSS high-water mark, metrics and enforcement on", "node", "rss_hwm_mib", 32, "%.1f MiB"},
	{"memory overrun to kill (watchdog), in sample intervals: max", "BenchmarkMemoryOverrunToKill", "max-intervals", 2, "%.2f"},
	{"a fork bomb's longest time over its memory limit (watchdog), in sample intervals", "BenchmarkForkBombTimeOverLimit", "max-over-intervals", 3, "%.2f"},
	{"quota controller cycle, 500 namespaces, 5,000 pods: p99", "BenchmarkEvaluationCycle", "p99-ms", 1000, "%.0f ms"},
	{"compute accuracy against the GPU model: worst cell", "sensitivity", "defaults max_error_pp", 2, "%.2f pp"},
}

// page is what the template reads.
type page struct {
	raw  *Raw
	frag string // make fragmentation's output
}

func (p page) Header(key string) (string, error) {
	v, ok := p.raw.Header[key]
	if !ok {
		return "", fmt.Errorf("the raw output has no %q header", key)
	}
	return v, nil
}

// V formats a benchmark's metric with the given verb.
func (p page) V(bench, unit, format string) (string, error) {
	v, err := p.raw.Value(bench, unit)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(format, v), nil
}

// L is a figure of a keyed line.
func (p page) L(kind, key string) (string, error) { return p.raw.Line(kind, key) }

// Raw is the output as printed.
func (p page) Raw() string { return strings.TrimRight(p.raw.Text, "\n") }

// Measured is a goal's figure.
func (p page) Measured(g Goal) (float64, error) {
	switch g.Bench {
	case "node", "sensitivity":
		s, err := p.raw.Line(g.Bench, g.Unit)
		if err != nil {
			return 0, err
		}
		return strconv.ParseFloat(s, 64)
	}
	return p.raw.Value(g.Bench, g.Unit)
}

// GoalTable is the results-against-goals table.
func (p page) GoalTable() (string, error) {
	var b strings.Builder
	b.WriteString("| what | goal | measured | met | source |\n|---|---|---|---|---|\n")
	var errs []error
	for _, g := range Goals {
		v, err := p.Measured(g)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		met := "yes"
		if v > g.Max || math.IsNaN(v) {
			met = "**no**"
		}
		src := "`" + g.Bench + "` " + g.Unit
		if g.Bench == "node" {
			src = "`make bench-node` " + g.Unit
		}
		fmt.Fprintf(&b, "| %s | ≤ %s | %s | %s | %s |\n", g.What, strings.TrimSpace(fmt.Sprintf(g.Show, g.Max)), fmt.Sprintf(g.Show, v), met, src)
	}
	return b.String(), errors.Join(errs...)
}

// Fragmentation is make fragmentation's table, as it printed it.
func (p page) Fragmentation() (string, error) {
	if !strings.Contains(p.frag, "| path |") {
		return "", errors.New("no fragmentation table: run make fragmentation")
	}
	return strings.TrimRight(p.frag, "\n"), nil
}

// Render writes the page from the raw output and make fragmentation's.
func Render(raw *Raw, frag string) ([]byte, error) {
	t, err := template.New("benchmarks").Option("missingkey=error").Parse(pageTemplate)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, page{raw: raw, frag: frag}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func main() {
	rawPath := flag.String("raw", "docs/benchmarks-raw.txt", "the raw output of make bench-report")
	fragPath := flag.String("fragmentation", "docs/fragmentation-raw.txt", "the output of make fragmentation")
	out := flag.String("out", "docs/benchmarks.md", "the page to write")
	flag.Parse()
	if err := run(*rawPath, *fragPath, *out); err != nil {
		fmt.Fprintf(os.Stderr, "benchreport: %v\n", err)
		os.Exit(1)
	}
}

func run(rawPath, fragPath, out string) error {
	frag, err := os.ReadFile(fragPath) //nolint:gosec // the operator's own flag
	if err != nil {
		return err
	}
	f, err := os.Open(rawPath) //nolint:gosec // the operator's own flag
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	raw, err := ParseRaw(f)
	if err != nil {
		return err
	}
	page, err := Render(raw, string(frag))
	if err != nil {
		return err
	}
	return os.WriteFile(out, page, 0o644) //nolint:gosec // a page to read
}
