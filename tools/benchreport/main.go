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
	{"API requests of one agent in steady state, per minute", "BenchmarkAgentAPIRequests", "requests/min", 2, "%.2f"},
	{"compute accuracy against the GPU model: worst cell", "sensitivity", "defaults max_error_pp", 2, "%.2f pp"},
	{"compute accuracy on a shared MIG instance (turns): worst cell within the claim", "sensitivity", "mig-defaults max_error_pp", 2, "%.2f pp"},
	{"quota controller cycle at 1,000 nodes, recording rules: p99", scalePrefix + "BenchmarkClusterScale/nodes=1000/rules=on", "p99-ms", 1000, "%.0f ms"},
	{"quota controller RSS at 1,000 nodes, recording rules", scalePrefix + "BenchmarkClusterScale/nodes=1000/rules=on", "rss-MiB", 256, "%.0f MiB"},
}

// promMaxSamples is Prometheus' default --query.max-samples: a query
// holding more samples at once is refused.
const promMaxSamples = 50_000_000

// scalePrefix marks a goal whose figure is make bench-scale's.
const scalePrefix = "scale:"

// page is what the template reads.
type page struct {
	raw   *Raw
	frag  string // make fragmentation's output
	scale *Raw   // make bench-scale's output
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
	if bench, ok := strings.CutPrefix(g.Bench, scalePrefix); ok {
		v, err := p.scale.Value(bench, g.Unit)
		if err != nil {
			return 0, fmt.Errorf("make bench-scale's output: %w", err)
		}
		return v, nil
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
		if bench, ok := strings.CutPrefix(g.Bench, scalePrefix); ok {
			src = "`make bench-scale` `" + bench + "` " + g.Unit
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

// S formats a make bench-scale figure with the given verb.
func (p page) S(bench, unit, format string) (string, error) {
	v, err := p.scale.Value(bench, unit)
	if err != nil {
		return "", fmt.Errorf("make bench-scale's output: %w", err)
	}
	return fmt.Sprintf(format, v), nil
}

// ScaleRaw is make bench-scale's output, as printed.
func (p page) ScaleRaw() string { return strings.TrimRight(p.scale.Text, "\n") }

// ScaleHeader is a header of make bench-scale's output.
func (p page) ScaleHeader(key string) (string, error) {
	v, ok := p.scale.Header[key]
	if !ok {
		return "", fmt.Errorf("make bench-scale's output has no %q header", key)
	}
	return v, nil
}

// ScaleTable is make bench-scale's figures by size and mode, and their
// growth from each size to the next.
func (p page) ScaleTable() (string, error) {
	sizes := p.scale.Sizes()
	if len(sizes) == 0 {
		return "", errors.New("no BenchmarkClusterScale lines: run make bench-scale")
	}
	var b strings.Builder
	b.WriteString("| nodes | recording rules | cycles | cycle p50 | p99 | max | queries | samples read per cycle (for the budget) | one query's peak samples | controller RSS |\n|---|---|---|---|---|---|---|---|---|---|\n")
	var errs []error
	v := func(bench, unit string) float64 {
		x, err := p.scale.Value(bench, unit)
		errs = append(errs, err)
		return x
	}
	for _, n := range sizes {
		for _, mode := range []string{"off", "on"} {
			bench := fmt.Sprintf("BenchmarkClusterScale/nodes=%d/rules=%s", n, mode)
			peak := fmt.Sprintf("%.0f", v(bench, "peak-samples"))
			if v(bench, "peak-samples") > promMaxSamples {
				peak += " (**over Prometheus' default `--query.max-samples`: refused**)"
			}
			fmt.Fprintf(&b, "| %d | %s | %.0f | %.0f ms | **%.0f ms** | %.0f ms | %.0f | %.0f (%.0f) | %s | %.0f MiB |\n", n, mode, v(bench, "cycles"), v(bench, "p50-ms"),
				v(bench, "p99-ms"), v(bench, "max-ms"), v(bench, "queries"), v(bench, "samples/cycle"), v(bench, "budget-samples/cycle"), peak, v(bench, "rss-MiB"))
		}
	}
	if len(sizes) > 1 {
		b.WriteString("\nGrowth from the size before (×):\n\n| nodes | rules | cycle p99 | samples read | for the budget | controller RSS |\n|---|---|---|---|---|---|\n")
		for i := 1; i < len(sizes); i++ {
			for _, mode := range []string{"off", "on"} {
				cur := fmt.Sprintf("BenchmarkClusterScale/nodes=%d/rules=%s", sizes[i], mode)
				prev := fmt.Sprintf("BenchmarkClusterScale/nodes=%d/rules=%s", sizes[i-1], mode)
				fmt.Fprintf(&b, "| %d over %d (×%.2f) | %s | ×%.2f | ×%.2f | ×%.2f | ×%.2f |\n", sizes[i], sizes[i-1], float64(sizes[i])/float64(sizes[i-1]), mode,
					v(cur, "p99-ms")/v(prev, "p99-ms"), v(cur, "samples/cycle")/v(prev, "samples/cycle"),
					v(cur, "budget-samples/cycle")/v(prev, "budget-samples/cycle"), v(cur, "rss-MiB")/v(prev, "rss-MiB"))
			}
		}
	}
	return strings.TrimRight(b.String(), "\n"), errors.Join(errs...)
}

// Render writes the page from the raw output and make fragmentation's.
func Render(raw *Raw, frag string, scale *Raw) ([]byte, error) {
	t, err := template.New("benchmarks").Option("missingkey=error").Parse(pageTemplate)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, page{raw: raw, frag: frag, scale: scale}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func main() {
	rawPath := flag.String("raw", "docs/benchmarks-raw.txt", "the raw output of make bench-report")
	fragPath := flag.String("fragmentation", "docs/fragmentation-raw.txt", "the output of make fragmentation")
	scalePath := flag.String("scale", "docs/scale-raw.txt", "the output of make bench-scale")
	out := flag.String("out", "docs/benchmarks.md", "the page to write")
	flag.Parse()
	if err := run(*rawPath, *fragPath, *scalePath, *out); err != nil {
		fmt.Fprintf(os.Stderr, "benchreport: %v\n", err)
		os.Exit(1)
	}
}

func run(rawPath, fragPath, scalePath, out string) error {
	frag, err := os.ReadFile(fragPath) //nolint:gosec // the operator's own flag
	if err != nil {
		return err
	}
	raw, err := ParseFile(rawPath)
	if err != nil {
		return err
	}
	scale, err := ParseFile(scalePath)
	if err != nil {
		return err
	}
	page, err := Render(raw, string(frag), scale)
	if err != nil {
		return err
	}
	return os.WriteFile(out, page, 0o644) //nolint:gosec // a page to read
}
