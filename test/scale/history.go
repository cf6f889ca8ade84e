// Package scale measures the cluster side of gpuslice at sizes one machine
// cannot run (make bench-scale): the quota controller against a real
// kube-apiserver holding the pods of N nodes and a real Prometheus holding
// 24 hours of the series N agents export, as their real exposition renders
// them, written as TSDB blocks by test/scale/blocks.
package scale

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/exporter"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// Shape is one node's GPUs and pods.
const (
	GPUsPerNode      = 8
	SlicesPerGPU     = 4
	ContainersPerGPU = 3 // one holds 2 slices, two hold 1
	PodsPerNode      = GPUsPerNode * ContainersPerGPU
	// NodesPerNamespace: a namespace's pods fill two nodes.
	NodesPerNamespace = 2
)

// Pod is one single-container pod of the simulated cluster.
type Pod struct {
	Namespace, Name string
	Node            int
	GPU, Slices     int
	// Util is its constant SM utilization, the rate its busy seconds
	// climb at.
	Util float64
}

// Namespace is node n's pods' namespace.
func Namespace(n int) string { return fmt.Sprintf("team-%04d", n/NodesPerNamespace) }

// NodeName is node n's name, the agents' instance label.
func NodeName(n int) string { return fmt.Sprintf("node-%04d", n) }

// PodsOf are node n's pods.
func PodsOf(n int) []Pod {
	var ps []Pod
	for g := range GPUsPerNode {
		for c := range ContainersPerGPU {
			slices := 1
			if c == 0 {
				slices = 2
			}
			ps = append(ps, Pod{Namespace: Namespace(n), Name: fmt.Sprintf("job-%04d-%d-%d", n, g, c), Node: n, GPU: g, Slices: slices,
				Util: 0.1 + float64((n+g+c)%8)/10})
		}
	}
	return ps
}

// snapshotOf is node n's sample with pods ps on it.
func snapshotOf(n int, ps []Pod) *node.Snapshot {
	s := &node.Snapshot{Time: time.Unix(1700000000, 0), Duration: 3 * time.Millisecond, Errors: map[string]uint64{}}
	for g := range GPUsPerNode {
		uuid := gpuUUID(n, g)
		s.Devices = append(s.Devices, node.Device{
			Device:   nvml.Device{UUID: uuid, Index: g, Model: "NVIDIA H100 80GB HBM3", MemoryBytes: 85520809984, PCIBusID: fmt.Sprintf("00000000:%02X:00.0", g+0x18)},
			Sample:   nvml.Sample{UUID: uuid, Utilization: 0.8, MemoryUsedBytes: 5e10, TemperatureCelsius: 65, PowerWatts: 500, EnergyJoules: 1e7, SMClockHertz: 1.98e9},
			SampleOK: true, ProcessesOK: true, Health: nvml.Health{UUID: uuid, Healthy: true}, XIDs: map[uint64]uint64{}, Slices: SlicesPerGPU, Allocated: SlicesPerGPU,
		})
	}
	for i, p := range ps {
		share := float64(p.Slices) / SlicesPerGPU
		s.Containers = append(s.Containers, node.Container{
			Namespace: p.Namespace, Pod: p.Name, Container: "main", UUID: gpuUUID(n, p.GPU), Index: p.GPU,
			Slices: p.Slices, MemoryLimitBytes: uint64(share * 85520809984), ComputeLimitRatio: share, MemoryUsedBytes: 5e9, SMUtilization: p.Util,
			BusySeconds: 1000, LastActive: time.Unix(1700000000, 0), Processes: 1,
			Cgroup: node.Cgroup{ContainerID: fmt.Sprintf("%08x%056x", n, i+1)},
		})
	}
	return s
}

// Exposition is the text node n's agent serves with pods ps.
func Exposition(n int, ps []Pod) []byte {
	snap := snapshotOf(n, ps)
	return exporter.NewExposition(fixed{snap}, exporter.Info{Version: "v0.0.0-scale", System: nvml.SystemInfo{DriverVersion: "580.95.05", CUDADriverVersion: 13000},
		Enforcement: enforced{snap}}).Append(nil)
}

func gpuUUID(n, g int) string { return fmt.Sprintf("GPU-%08x-%04x-4000-8000-000000000000", n, g) }

// Read are the families the quota controller or its recording rules
// read: the benchmark writes their whole history at the scrape interval;
// the other families' last hour (they are in the index, as a real
// agent's are, but no query of the controller reads them).
var Read = map[string]bool{
	contract.MetricContainerGPUBusySeconds: true, contract.MetricContainerSMUtilization: true,
	contract.MetricContainerComputeLimit: true, contract.MetricContainerComputeUnmeasured: true,
	contract.MetricContainerUseUnknown: true, contract.MetricAgentGPUBlind: true, "up": true,
}

// WriteSeries writes node n's series, as Prometheus stores its agent's
// scrape, in test/scale/blocks' input format: every sample of its real
// exposition with the scrape's labels (instance, job and the trust label
// the chart's ServiceMonitor sets), and up. Counters are constant in the
// exposition except busy seconds, which climb at the pod's utilization.
// The families Read holds have the whole history; the others start at
// recent.
func WriteSeries(out io.Writer, n int, recent time.Time) error {
	util := map[string]float64{}
	for _, p := range PodsOf(n) {
		util[p.Name] = p.Util
	}
	text := Exposition(n, PodsOf(n))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return fmt.Errorf("node %d's exposition: %w", n, err)
	}
	scrape := map[string]string{"instance": NodeName(n), "job": "gpuslice-agent", "gpuslice_scrape_namespace": "gpuslice-system"}
	w := bufio.NewWriter(out)
	line := func(kind string, v float64, name string, ls map[string]string) error {
		m := map[string]string{"__name__": name}
		for k, v := range scrape {
			m[k] = v
		}
		for k, v := range ls {
			m[k] = v // the agent's labels are honored (honorLabels: true)
		}
		js, err := json.Marshal(m)
		if err != nil {
			return err
		}
		if !Read[name] {
			fmt.Fprintf(w, "@%d ", recent.Unix())
		}
		_, err = fmt.Fprintf(w, "%s %g %s\n", kind, v, js)
		return err
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			ls := map[string]string{}
			for _, lp := range m.GetLabel() {
				ls[lp.GetName()] = lp.GetValue()
			}
			switch {
			case m.GetCounter() != nil && counterName(name) == contract.MetricContainerGPUBusySeconds:
				err = line("counter", util[ls["pod"]], contract.MetricContainerGPUBusySeconds, ls)
			case m.GetCounter() != nil:
				err = line("gauge", m.GetCounter().GetValue(), counterName(name), ls)
			case m.GetGauge() != nil:
				err = line("gauge", m.GetGauge().GetValue(), name, ls)
			case m.GetHistogram() != nil:
				err = histogram(line, name, ls, m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum(), m.GetHistogram().GetBucket())
			default:
				err = fmt.Errorf("family %s: unexpected type %s", name, f.GetType())
			}
			if err != nil {
				return err
			}
		}
	}
	if err := line("gauge", 1, "up", nil); err != nil {
		return err
	}
	return w.Flush()
}

// counterName is a counter family's sample name.
func counterName(family string) string {
	if strings.HasSuffix(family, "_total") {
		return family
	}
	return family + "_total"
}

// histogram writes a histogram's series: buckets, sum and count.
func histogram[B interface {
	GetUpperBound() float64
	GetCumulativeCount() uint64
}](line func(string, float64, string, map[string]string) error, name string, ls map[string]string, count uint64, sum float64, buckets []B) error {
	for _, b := range buckets {
		bl := map[string]string{"le": fmt.Sprint(b.GetUpperBound())}
		for k, v := range ls {
			bl[k] = v
		}
		if err := line("gauge", float64(b.GetCumulativeCount()), name+"_bucket", bl); err != nil {
			return err
		}
	}
	if len(buckets) == 0 || !math.IsInf(buckets[len(buckets)-1].GetUpperBound(), 1) {
		inf := map[string]string{"le": "+Inf"}
		for k, v := range ls {
			inf[k] = v
		}
		if err := line("gauge", float64(count), name+"_bucket", inf); err != nil {
			return err
		}
	}
	if err := line("gauge", sum, name+"_sum", ls); err != nil {
		return err
	}
	return line("gauge", float64(count), name+"_count", ls)
}

// fixed is an agent's latest sample.
type fixed struct{ s *node.Snapshot }

func (f fixed) Snapshot() *node.Snapshot { return f.s }

// enforced is enforcement holding every container of a node.
type enforced struct{ s *node.Snapshot }

func (e enforced) Stats() map[string]enforce.Stats {
	out := map[string]enforce.Stats{}
	for _, c := range e.s.Containers {
		out[c.Cgroup.Key()] = enforce.Stats{Throttled: time.Minute, Duty: 0.5, Compute: enforce.ReasonEnforced, Memory: enforce.ReasonEnforced}
	}
	return out
}
func (enforced) Generation() uint64                       { return 1 }
func (enforced) DriverStats() (enforce.DriverStats, bool) { return enforce.DriverStats{}, false }
func (enforced) Failures() uint64                         { return 0 }
func (enforced) Tiers() (string, string)                  { return "freezer", "watchdog" }
func (enforced) Node() enforce.NodeState {
	return enforce.NodeState{Compute: enforce.ReasonEnforced, Memory: enforce.ReasonEnforced}
}
