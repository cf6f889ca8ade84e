package main

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// writeReport writes the findings as Markdown.
func (c *check) writeReport(path string) error {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# GPU validation report")
	w("")
	w("Written by `gpu-check --mode=%s` (test/gpucheck) on %s.", c.o.mode, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	if c.o.mode == "dry" {
		w("**Dry run: no GPU.** The steps ran against the fake libnvidia-ml; the numbers test the kit, not a GPU.")
	}
	w("")
	w("## Provenance")
	w("")
	for _, e := range c.env {
		w("- %s", e)
	}
	w("- MIG mode (read, never changed): %s", c.migMode)
	w("- Agent: %d slices per GPU, default sample interval and throttle period; strict policy, then burst for the fairness run", slicesPerGPU)
	w("- Each scenario settles %s, then is measured in %d consecutive windows of %s; figures are the windows' mean with their range", c.o.settle, windows, c.o.measure)
	w("")
	w("## Cgroup freezing")
	w("")
	w("Does freezing a cgroup stop a CPU spinner in it? %s", c.freezer)
	w("")
	unit := "iterations/s of the matmul loop"
	if c.o.mode == "dry" {
		unit = "GPU-seconds served per second to the fake workload"
	}
	w("## Baseline, overhead and work conservation")
	w("")
	w("The judge is each loop's own completed work (%s), never NVML. The uncapped baseline is the loop alone in a cgroup outside every pod, which the agent never throttles.", unit)
	w("")
	c.writeBaseline(w)
	w("")
	w("## Compute shares")
	w("")
	w("Shares are of the uncapped baseline. The agent's own reading (NVML busy seconds per second) and the throttle's duty are beside them, not the judge.")
	w("")
	c.writeShares(w)
	w("")
	w("## Fairness under burst")
	w("")
	c.writeFairness(w)
	w("")
	w("## Latency victim")
	w("")
	c.writeLatency(w)
	c.writeAttribution(w)
	w("")
	w("## Memory")
	w("")
	w("- Memory hog: %s", c.hog)
	w("- Memory tier the agent reports: %s", c.tier)
	w("- What the agent said of the driver's per-cgroup limits: `%s`", c.driverLog)
	w("")
	w("## MIG")
	w("")
	w("MIG mode (index, current, pending): %s. The kit never changes it.", c.migMode)
	w("")
	w("What the agent offered the kubelet stand-in: %s. A GPU in MIG mode (current or pending) is never cut into `nvidia.com/vgpu` slices; its instances are offered under `nvidia.com/mig-<profile>` (docs/mig.md), and the scenarios above need a whole GPU.", c.offered)
	w("")
	w("## Raw work counters")
	w("")
	w("Each loop's completed work in each second of its windows, in order.")
	w("")
	c.writeRaw(w)
	w("")
	w("## Result")
	w("")
	if len(c.failures) == 0 {
		w("Every step ran.")
	} else {
		for _, f := range c.failures {
			w("- FAILED: %s", f)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644) //nolint:gosec // a report to read
}

// rangeOf formats a loop's mean with its windows' range.
func rangeOf(s scenario, i int) string {
	mean, lo, hi := s.stats(i)
	return fmt.Sprintf("%.3f [%.3f–%.3f]", mean, lo, hi)
}

func (c *check) writeBaseline(w func(string, ...any)) {
	w("| measure | value |")
	w("|---|---|")
	w("| uncapped baseline | %.3f |", c.baseline)
	if c.baseline > 0 {
		w("| a lone tenant holding 100%% under strict, of the baseline (overhead) | %.3f (%+.1f%%) |", c.solo/c.baseline, (c.solo/c.baseline-1)*100)
	}
	for _, s := range c.sharing() {
		if s.err != nil || c.baseline <= 0 {
			continue
		}
		sum := 0.0
		for i := range s.rates {
			m, _, _ := s.stats(i)
			sum += m
		}
		w("| work retained under sharing, %s (Σ rates / baseline) | %.3f |", s.name, sum/c.baseline)
	}
}

// sharing is every scenario where several loops share the GPU.
func (c *check) sharing() []scenario {
	var out []scenario
	for _, s := range c.scenarios {
		if len(s.loops) > 1 {
			out = append(out, s)
		}
	}
	if c.burst != nil {
		out = append(out, *c.burst)
	}
	return out
}

// writeShares writes the table of each scenario's shares.
func (c *check) writeShares(w func(string, ...any)) {
	w("| scenario | policy | pod | limit | rate [range] | share of baseline | error (pp) | agent's reading | duty |")
	w("|---|---|---|---|---|---|---|---|---|")
	rows := slices.Clone(c.scenarios)
	if c.burst != nil {
		rows = append(rows, *c.burst)
	}
	for _, s := range rows {
		if s.err != nil {
			w("| %s | %s | | | | | failed: %v | | |", s.name, s.policy, s.err)
			continue
		}
		for i, l := range s.loops {
			limit := float64(l.slices) / slicesPerGPU
			mean, _, _ := s.stats(i)
			share := 0.0
			if c.baseline > 0 {
				share = mean / c.baseline
			}
			lim, errPP := "none", ""
			if l.slices > 0 {
				lim, errPP = fmt.Sprintf("%.0f%%", limit*100), fmt.Sprintf("%+.1f", (share-limit)*100)
			}
			agent, duty := "", ""
			if i < len(s.agent) && l.slices > 0 {
				agent, duty = fmt.Sprintf("%.3f", s.agent[i]), fmt.Sprintf("%.3f", s.duty[i])
			}
			w("| %s | %s | %d | %s | %s | %.3f | %s | %s | %s |", s.name, s.policy, i, lim, rangeOf(s, i), share, errPP, agent, duty)
		}
	}
}

// jain is Jain's fairness index of xs: 1 when all are equal, 1/n when one
// takes everything.
func jain(xs []float64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += x
		sq += x * x
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(xs)) * sq)
}

func (c *check) writeFairness(w func(string, ...any)) {
	if c.burst == nil || c.burst.err != nil {
		w("Not run.")
		return
	}
	var means []float64
	for i := range c.burst.loops {
		m, _, _ := c.burst.stats(i)
		means = append(means, m)
	}
	w("Four greedy tenants holding 25%% each under burst (the shares table has each). Jain's fairness index of their rates: **%.4f** (1 is perfectly even, 0.25 one tenant taking all).", jain(means))
}

// percentile is the p-th percentile (0..1) of xs, nearest rank.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func (c *check) writeLatency(w func(string, ...any)) {
	if c.o.mode == "dry" {
		w("A small inference-style loop's step time (on the fake: the wall time each millisecond of GPU time took to be served).")
	} else {
		w("A small inference-style loop (8 bf16 matmuls of 2048², then 10 ms idle) and its step time, alone and beside a greedy neighbour.")
	}
	w("")
	w("| case | p50 (ms) | p99 (ms) | steps |")
	w("|---|---|---|---|")
	for _, s := range c.latency {
		if s.err != nil {
			w("| %s | | | failed: %v |", s.name, s.err)
			continue
		}
		st := s.steps[0]
		w("| %s | %.2f | %.2f | %d |", s.name, percentile(st, 0.5)*1000, percentile(st, 0.99)*1000, len(st))
	}
	if c.mps != "" {
		w("| beside a greedy neighbour, MPS | | | not run: %s |", c.mps)
	}
}

func (c *check) writeRaw(w func(string, ...any)) {
	all := append(slices.Clone(c.scenarios), c.latency...)
	if c.burst != nil {
		all = append(all, *c.burst)
	}
	for _, s := range all {
		for i, raw := range s.raw {
			if len(raw) == 0 {
				continue
			}
			parts := make([]string, len(raw))
			for j, v := range raw {
				parts[j] = fmt.Sprintf("%.3g", v)
			}
			w("- %s, loop %d: %s", s.name, i, strings.Join(parts, " "))
		}
	}
}

// writeAttribution compares the agent's per-container memory with the
// driver's view.
func (c *check) writeAttribution(w func(string, ...any)) {
	w("")
	w("## Attribution")
	w("")
	switch {
	case c.attribErr != nil:
		w("Not compared: %s: %v", c.attribSrc, c.attribErr)
	case len(c.attrib) == 0:
		w("Not compared.")
	default:
		w("GPU memory per container: the agent's `gpuslice_container_memory_used_bytes` against %s for the same process.", c.attribSrc)
		w("")
		w("| pod | agent (MiB) | %s (MiB) | match |", c.attribSrc)
		w("|---|---|---|---|")
		for _, a := range c.attrib {
			match := a.truth > 0 && math.Abs(float64(a.agent)-float64(a.truth)) <= 0.01*float64(a.truth)
			w("| %s | %d | %d | %t |", a.pod, a.agent>>20, a.truth>>20, match)
		}
	}
}
