package exporter

import (
	"bytes"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// FuzzExposition renders a snapshot whose names and values are arbitrary
// (a driver's model string, a node's names) and checks that Prometheus's
// own parser reads every family back with the label values intact.
func FuzzExposition(f *testing.F) {
	f.Add("ml", "pod-a", "main", "NVIDIA H100 80GB HBM3", 0.5)
	f.Add(`a"b`, "p\\q", "c\nd", "model with \"quotes\"", -1.5)
	f.Fuzz(func(t *testing.T, ns, pod, ctr, product string, v float64) {
		if !utf8.ValidString(ns) || !utf8.ValidString(pod) || !utf8.ValidString(ctr) || !utf8.ValidString(product) {
			return // names from the API server and NVML are UTF-8
		}
		snap := &node.Snapshot{
			Time:    time.Unix(1700000000, 0),
			Devices: []node.Device{{Device: nvml.Device{UUID: "GPU-x", Model: product}, SampleOK: true, ProcessesOK: true, Sample: nvml.Sample{Utilization: v}}},
			Containers: []node.Container{{Namespace: ns, Pod: pod, Container: ctr, UUID: "GPU-x", Slices: 1, SMUtilization: v,
				ComputeLimitRatio: 0.5}},
			Errors:    map[string]uint64{},
			Durations: node.Histogram{Counts: make([]uint64, len(node.DurationBuckets))},
		}
		text := NewExposition(fixed{snap}, info).Append(nil)
		p := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := p.TextToMetricFamilies(bytes.NewReader(text))
		if err != nil {
			t.Fatalf("own exposition does not parse: %v\n%s", err, text)
		}
		got := ""
		for _, m := range mfs["gpuslice_container_slices"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "pod" {
					got = l.GetValue()
				}
			}
		}
		if got != pod {
			t.Errorf("pod label read back as %q, want %q", got, pod)
		}
	})
}
