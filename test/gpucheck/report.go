package main

import (
	"fmt"
	"math"
	"os"
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
	for _, e := range c.env {
		w("- %s", e)
	}
	w("- Agent: strict policy, %d slices per GPU, default sample interval and throttle period", slicesPerGPU)
	w("- Each scenario settles %s, then is measured for %s", c.o.settle, c.o.measure)
	w("")
	w("## Cgroup freezing")
	w("")
	w("Does freezing a cgroup stop a CPU spinner in it? %s", c.freezer)
	w("")
	w("## Compute shares under strict limits")
	w("")
	unit := "iterations/s (matmul loop)"
	if c.o.mode == "dry" {
		unit = "GPU-seconds served per second (fake workload)"
	}
	w("Judged by each loop's own completed work in %s against its rate alone on the GPU: %.3f.", unit, c.solo)
	w("")
	w("The agent's own reading (NVML busy seconds per second) and the throttle's duty are beside it, not the judge.")
	w("")
	c.writeShares(w)
	c.writeAttribution(w)
	w("")
	w("## Memory")
	w("")
	w("- Memory hog: %s", c.hog)
	w("- Memory tier the agent reports: %s", c.tier)
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

// writeShares writes the table of each scenario's shares.
func (c *check) writeShares(w func(string, ...any)) {
	w("| scenario | pod | limit | rate | share of solo | error (pp) | agent's reading | duty |")
	w("|---|---|---|---|---|---|---|---|")
	for _, s := range c.scenarios {
		if s.err != nil {
			w("| %s | | | | | failed: %v | | |", s.name, s.err)
			continue
		}
		for i, n := range s.slices {
			limit := float64(n) / slicesPerGPU
			share := 0.0
			if i < len(s.shares) {
				share = s.shares[i]
			}
			w("| %s | %d | %.0f%% | %.3f | %.3f | %+.1f | %.3f | %.3f |", s.name, i, limit*100, s.rates[i], share, (share-limit)*100, s.agent[i], s.duty[i])
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
