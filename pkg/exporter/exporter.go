package exporter

import (
	"bytes"
	"cmp"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// Namespace prefixes every metric.
const Namespace = "gpuslice"

// Source gives the latest snapshot.
type Source interface {
	Snapshot() *node.Snapshot
}

// Enforcement reports what enforcement did, by container ID, and which
// mechanisms it uses.
type Enforcement interface {
	Stats() map[string]enforce.Stats
	Failures() uint64
	Tiers() (compute, memory string)
	Node() enforce.NodeState
	DriverStats() (enforce.DriverStats, bool)
	// Generation changes whenever what the methods above report changes.
	Generation() uint64
}

// Info is static information about the agent and its node, and where
// enforcement statistics come from (nil: none yet).
type Info struct {
	Version     string
	System      nvml.SystemInfo
	Enforcement Enforcement
	// MIG returns the node's GPUs as last read, MIG modes and instances
	// included; nil exports no MIG series.
	MIG func() []nvml.Device
	// MIGStrategy names the resources MIG instances are offered under
	// (single: nvidia.com/gpu; otherwise the mixed strategy's names).
	MIGStrategy string
	// MIGSliceResource, when set, names the resource a MIG profile's
	// instances are offered under as slices, or "" for a profile offered
	// whole (slicing.migProfiles).
	MIGSliceResource func(profile string) string
	// Healthy says whether a MIG instance (of GPU parent) may be used;
	// nil exports no instance health.
	Healthy func(uuid, parent string) bool
}

// Exposition renders the node's metrics in the Prometheus text format
// straight from the latest snapshot and enforcement's view: no registry,
// no intermediate metric objects, one pass over the snapshot per family.
type Exposition struct {
	src  Source
	info Info
	cuda string
}

// NewExposition returns the exposition of src's snapshots.
func NewExposition(src Source, info Info) *Exposition {
	e := &Exposition{src: src, info: info}
	if info.System.CUDADriverVersion > 0 {
		e.cuda = info.System.CUDAVersion()
	}
	return e
}

// expositionKey names one rendering: a sample and the generation of what
// enforcement had published.
type expositionKey struct {
	snap *node.Snapshot
	gen  uint64
}

// Key names the exposition Append would render now: every series comes
// from the sample and enforcement's published view, so equal keys render
// the same bytes (Handler renders once per key).
func (e *Exposition) Key() any {
	k := expositionKey{snap: e.src.Snapshot()}
	if e.info.Enforcement != nil {
		k.gen = e.info.Enforcement.Generation()
	}
	return k
}

// view is what one rendering reads: the snapshot and enforcement's stats,
// each read once.
type view struct {
	e     *Exposition
	snap  *node.Snapshot
	stats map[string]enforce.Stats
	// per GPU, from the snapshot's processes
	unattributed, unauthorized map[string]int
	// each device's and container's label set, rendered once
	devLabels, ctrLabels [][]byte
	// the GPUs as last read, for their MIG modes and instances
	mig []nvml.Device
}

// Append appends the exposition of the current snapshot to b.
func (e *Exposition) Append(b []byte) []byte {
	v := &view{e: e, snap: e.src.Snapshot(), unattributed: map[string]int{}, unauthorized: map[string]int{}}
	if e.info.Enforcement != nil {
		v.stats = e.info.Enforcement.Stats()
	}
	if e.info.MIG != nil {
		v.mig = e.info.MIG()
	}
	for _, u := range v.snap.Unattributed {
		v.unattributed[u.UUID]++
	}
	for _, u := range v.snap.Unauthorized {
		v.unauthorized[u.UUID]++
	}
	v.renderLabels()
	w := &textWriter{b: b}
	for i := range families {
		w.start(&families[i].family)
		families[i].write(w, v)
	}
	return w.b
}

// Gather parses the exposition back into metric families, as a
// prometheus.Gatherer: for tests and tools that compare or lint it.
func (e *Exposition) Gather() ([]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(e.Append(nil)))
	if err != nil {
		return nil, fmt.Errorf("parse own exposition: %w", err)
	}
	out := make([]*dto.MetricFamily, 0, len(mfs))
	for _, f := range families {
		if mf, ok := mfs[f.name]; ok {
			out = append(out, mf)
		}
	}
	return out, nil
}

// renderLabels renders every device's and container's label set into one
// buffer.
func (v *view) renderLabels() {
	arena := make([]byte, 0, 64*len(v.snap.Devices)+160*len(v.snap.Containers))
	var idx [20]byte
	v.devLabels = make([][]byte, len(v.snap.Devices))
	for i, d := range v.snap.Devices {
		start := len(arena)
		arena = appendLabels(arena, "gpu", string(strconv.AppendInt(idx[:0], int64(d.Index), 10)), "uuid", d.UUID)
		v.devLabels[i] = arena[start:len(arena):len(arena)]
	}
	v.ctrLabels = make([][]byte, len(v.snap.Containers))
	var pairs [12]string
	for i, c := range v.snap.Containers {
		start := len(arena)
		labels := append(pairs[:0], "namespace", c.Namespace, "pod", c.Pod, "container", c.Container,
			"gpu", string(strconv.AppendInt(idx[:0], int64(c.Index), 10)), "uuid", c.UUID)
		if in := v.instance(c.UUID); in != nil {
			// On a MIG instance, its share of the GPU: budgets weight by it.
			labels = append(labels, contract.LabelGPUFraction, strconv.FormatFloat(in.GPUFraction(), 'g', 4, 64))
		}
		arena = appendLabels(arena, labels...)
		v.ctrLabels[i] = arena[start:len(arena):len(arena)]
	}
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// perDevice writes one sample per device for which ok holds.
func perDevice(value func(d node.Device) float64, ok func(d node.Device) bool) func(*textWriter, *view) {
	return func(w *textWriter, v *view) {
		for i, d := range v.snap.Devices {
			if ok == nil || ok(d) {
				w.sampleSet(value(d), v.devLabels[i])
			}
		}
	}
}

// sampled is true for a GPU with a reading this round: without one its
// series are left out rather than a made-up zero reported. A MIG
// instance has no GPU-level readings (they are its GPU's).
func sampled(d node.Device) bool { return d.SampleOK && d.Instance == nil }

// gpu is true for a physical GPU; false for a MIG instance read as a
// device, which the device_* families leave to the mig_* ones.
func gpu(d node.Device) bool { return d.Instance == nil }

// perContainer writes one sample per container for which ok holds.
func perContainer(value func(c node.Container) float64, ok func(c node.Container) bool) func(*textWriter, *view) {
	return func(w *textWriter, v *view) {
		for i, c := range v.snap.Containers {
			if ok == nil || ok(c) {
				w.sampleSet(value(c), v.ctrLabels[i])
			}
		}
	}
}

// seen is true for a container whose use is known: on a blind GPU, or in a
// pod with a process that could not be placed in one container, its use
// is unknown, and a zero would read as an idle pod downstream.
func seen(c node.Container) bool { return !c.Blind && c.Unknown == "" }

// computeSeen is true for a container whose compute use is known: seen,
// and measured (not on a MIG instance without GPM, or shared).
func computeSeen(c node.Container) bool { return seen(c) && !c.ComputeUnmeasured }

// perEnforced writes one sample per container from what enforcement did to
// it (nothing known: not throttled, not in force).
func perEnforced(value func(st enforce.Stats) float64) func(*textWriter, *view) {
	return func(w *textWriter, v *view) {
		for i, c := range v.snap.Containers {
			w.sampleSet(value(v.enforced(c)), v.ctrLabels[i])
		}
	}
}

func (v *view) enforced(c node.Container) enforce.Stats {
	if st, ok := v.stats[c.Cgroup.Key()]; ok {
		return st
	}
	return enforce.Stats{Duty: 1}
}

// tierReason is one resource's enforcement reason.
type tierReason struct{ resource, reason string }

// byReason orders a container's (or the node's) two series as their
// labels sort (reason before resource), as client_golang writes them.
func byReason(compute, memory string) [2]tierReason {
	c, m := tierReason{"compute", compute}, tierReason{"memory", memory}
	if memory < compute {
		return [2]tierReason{m, c}
	}
	return [2]tierReason{c, m}
}

// sortedInstances are a GPU's MIG instances in label order (profile,
// then UUID), as client_golang writes series.
func sortedInstances(d nvml.Device) []nvml.MIGInstance {
	return slices.SortedFunc(slices.Values(d.MIG.Instances), func(a, b nvml.MIGInstance) int {
		return cmp.Or(strings.Compare(a.Profile, b.Profile), strings.Compare(a.UUID, b.UUID))
	})
}

// instance is the MIG instance read as a device with this UUID, or nil.
func (v *view) instance(uuid string) *nvml.InForce {
	if d := v.device(uuid); d != nil {
		return d.Instance
	}
	return nil
}

// device is the device of the snapshot with this UUID, or nil; only a
// MIG instance is looked for (a GPU's containers need no lookup).
func (v *view) device(uuid string) *node.Device {
	if !nvml.IsMIGUUID(uuid) {
		return nil
	}
	for i := range v.snap.Devices {
		if v.snap.Devices[i].UUID == uuid {
			return &v.snap.Devices[i]
		}
	}
	return nil
}

// instancesByLabel are the MIG instances read as devices, in label order
// (gpu index as a string, then MIG UUID), as client_golang writes series.
func (v *view) instancesByLabel() []node.Device {
	var out []node.Device
	for _, d := range v.snap.Devices {
		if d.Instance != nil {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b node.Device) int {
		return cmp.Or(strings.Compare(strconv.Itoa(a.Index), strconv.Itoa(b.Index)), strings.Compare(a.UUID, b.UUID))
	})
	return out
}

// migResource is the resource a MIG profile's instances are offered
// under.
func (v *view) migResource(profile string) string {
	if v.e.info.MIGSliceResource != nil {
		if r := v.e.info.MIGSliceResource(profile); r != "" {
			return r
		}
	}
	switch v.e.info.MIGStrategy {
	case contract.MIGStrategySingle:
		return contract.MIGSingleResource
	case contract.MIGStrategyNone:
		return "" // not offered by gpuslice
	case contract.MIGStrategyDRA:
		return contract.MIGDeviceClass // devices of gpuslice's DRA driver, by their class
	}
	return contract.MIGResource(profile)
}

// metric is one family and how its samples are written.
type metric struct {
	family
	write func(*textWriter, *view)
}

func m(subsystem, name, typ, help string, write func(*textWriter, *view)) metric {
	full := Namespace + "_" + name
	if subsystem != "" {
		full = Namespace + "_" + subsystem + "_" + name
	}
	return metric{family{full, typ, help}, write}
}

// families is every metric the agent exports, sorted by name.
var families = []metric{
	m("agent", "errors_total", "counter", "Failed reads while sampling, by source.", func(w *textWriter, v *view) {
		for _, src := range []string{node.SourceCheckpoint, node.SourceDRA, node.SourceNVML, node.SourcePodResources, node.SourceProc} {
			w.sample(float64(v.snap.Errors[src]), "source", src)
		}
	}),
	m("agent", "gpu_blind", "gauge",
		"1 when the GPU's readings or process list failed in the last sample: its containers' use series are absent, not zero, and their throttles hold; 0 otherwise.",
		perDevice(func(d node.Device) float64 { return bit(d.Blind()) }, nil)),
	m("agent", "last_sample_timestamp_seconds", "gauge", "When the last sample was taken.", func(w *textWriter, v *view) {
		if !v.snap.Time.IsZero() {
			w.sample(float64(v.snap.Time.UnixMilli()) / 1000)
		}
	}),
	m("agent", "sample_duration_seconds", "histogram", "Time one sample of the node took.", func(w *textWriter, v *view) {
		h := v.snap.Durations
		w.histogram(node.DurationBuckets, h.Counts, h.Count, h.Sum)
	}),
	m("agent", "stale_input", "gauge",
		"1 when the last sample read a host file (source checkpoint or dra_prepared) as its last copy read whole, a later read having failed (torn, garbage, a newer format): what runs keeps the holdings it lists, and pods it does not list are never judged unauthorized; 0 otherwise.",
		func(w *textWriter, v *view) {
			st := v.snap.Stale
			w.sample(bit(st.Checkpoint), "source", "checkpoint")
			w.sample(bit(st.Prepared), "source", "dra_prepared")
		}),
	m("agent", "unattributed_processes", "gauge", "GPU processes in the last sample that no container holding slices could be found for.", func(w *textWriter, v *view) {
		for i, d := range v.snap.Devices {
			w.sampleSet(float64(v.unattributed[d.UUID]), v.devLabels[i])
		}
	}),
	m("agent", "unauthorized_processes", "gauge", "GPU processes in the last sample that run in a pod whose container holds no slice of the GPU.", func(w *textWriter, v *view) {
		for i, d := range v.snap.Devices {
			w.sampleSet(float64(v.unauthorized[d.UUID]), v.devLabels[i])
		}
	}),
	m("", "build_info", "gauge", "The agent's build; always 1.", func(w *textWriter, v *view) {
		w.sample(1, "version", v.e.info.Version, "goversion", runtime.Version())
	}),
	m("container", "claim_info", "gauge", "A DRA claim (of gpuslice's driver) through which the container holds the GPU; always 1. Absent for nvidia.com/vgpu slices.",
		func(w *textWriter, v *view) {
			for _, c := range v.snap.Containers {
				for _, claim := range c.Claims {
					ns, name, _ := strings.Cut(claim, "/")
					w.sample(1, "namespace", c.Namespace, "pod", c.Pod, "container", c.Container, "gpu", strconv.Itoa(c.Index), "uuid", c.UUID,
						"claim_namespace", ns, "claim", name)
				}
			}
		}),
	m("container", "compute_limit_ratio", "gauge", "Share of the GPU's compute the container's slices allow.",
		perContainer(func(c node.Container) float64 { return c.ComputeLimitRatio }, nil)),
	m("container", "compute_unmeasured", "gauge",
		"1 when the container's compute use on the device cannot be measured (a MIG instance, where NVML measures no process: on a GPU without GPM, before Hopper, or one several containers hold), so its SM utilization, busy time and last activity are absent, never zero, while its memory is measured; 0 otherwise.",
		perContainer(func(c node.Container) float64 { return bit(c.ComputeUnmeasured) }, nil)),
	m("container", "gpu_busy_seconds_total", "counter", "GPU time used by the container's processes: SM utilization integrated over time.",
		perContainer(func(c node.Container) float64 { return c.BusySeconds }, computeSeen)),
	m("container", "last_active_timestamp_seconds", "gauge", "Last time the container's processes used the GPU.",
		perContainer(func(c node.Container) float64 { return float64(c.LastActive.UnixMilli()) / 1000 },
			func(c node.Container) bool { return computeSeen(c) && !c.LastActive.IsZero() })),
	m("container", "memory_limit_bytes", "gauge", "GPU memory the container's slices allow.",
		perContainer(func(c node.Container) float64 { return float64(c.MemoryLimitBytes) }, nil)),
	m("container", "memory_used_bytes", "gauge", "GPU memory held by the container's processes.",
		perContainer(func(c node.Container) float64 { return float64(c.MemoryUsedBytes) }, seen)),
	m("container", "mig_info", "gauge",
		"The MIG instance the container holds (uuid is the instance's MIG UUID, parent_uuid its GPU's), with its profile; always 1. Absent for slices of a whole GPU.",
		func(w *textWriter, v *view) {
			for _, c := range v.snap.Containers {
				if d := v.instance(c.UUID); d != nil {
					w.sample(1, "namespace", c.Namespace, "pod", c.Pod, "container", c.Container, "gpu", strconv.Itoa(c.Index), "uuid", c.UUID,
						"mig_profile", d.Profile, "parent_uuid", d.Parent.UUID)
				}
			}
		}),
	m("container", "slices", "gauge", "Slices of the GPU the container holds.",
		perContainer(func(c node.Container) float64 { return float64(c.Slices) }, nil)),
	m("container", "sm_utilization_of_limit_ratio", "gauge", "SM utilization relative to the container's compute limit; above 1 when it bursts into idle GPU time.",
		perContainer(func(c node.Container) float64 { return c.SMUtilization / c.ComputeLimitRatio },
			func(c node.Container) bool { return computeSeen(c) && c.ComputeLimitRatio > 0 })),
	m("container", "sm_utilization_ratio", "gauge", "Share of the GPU's SM time used by the container's processes.",
		perContainer(func(c node.Container) float64 { return c.SMUtilization }, computeSeen)),
	m("container", "use_unknown", "gauge",
		"1 when the container's use of the GPU cannot be told: a process of its pod on the GPU could not be placed in one of its containers, so its use series are absent (never zero) and its pod is held at the pod's level; 0 otherwise.",
		perContainer(func(c node.Container) float64 { return bit(c.Unknown != "") }, nil)),
	m("device", "energy_joules_total", "counter", "Energy used since the driver was loaded.",
		perDevice(func(d node.Device) float64 { return d.Sample.EnergyJoules }, sampled)),
	m("device", "healthy", "gauge", "1 if the GPU's slices are offered as Healthy, 0 if not.",
		perDevice(func(d node.Device) float64 { return bit(d.Health.Healthy) }, gpu)),
	m("device", "info", "gauge", "GPU identity; always 1.", func(w *textWriter, v *view) {
		for _, d := range v.snap.Devices {
			if !gpu(d) {
				continue
			}
			w.sample(1, "gpu", strconv.Itoa(d.Index), "uuid", d.UUID, "model", d.Model, "pci_bus_id", d.PCIBusID,
				"driver_version", v.e.info.System.DriverVersion, "cuda_version", v.e.cuda)
		}
	}),
	m("device", "memory_total_bytes", "gauge", "GPU framebuffer memory.",
		perDevice(func(d node.Device) float64 { return float64(d.MemoryBytes) }, gpu)),
	m("device", "memory_used_bytes", "gauge", "GPU framebuffer memory in use.",
		perDevice(func(d node.Device) float64 { return float64(d.Sample.MemoryUsedBytes) }, sampled)),
	m("device", "mig_mode", "gauge",
		"1 when the MIG-capable GPU's MIG mode is enabled (state current: in force; pending: from its next reset), 0 when not. A GPU with either is not cut into slices: its MIG instances are offered under their own resources (gpuslice_mig_instance_info), isolated by the hardware; the containers on them are measured per instance (memory; compute is unmeasured on MIG) and a process on an instance its container does not hold is unauthorized (docs/mig.md).",
		func(w *textWriter, v *view) {
			for _, d := range v.mig {
				if d.MIGCapable {
					w.sample(bit(d.MIG.Current), "gpu", strconv.Itoa(d.Index), "state", "current", "uuid", d.UUID)
					w.sample(bit(d.MIG.Pending), "gpu", strconv.Itoa(d.Index), "state", "pending", "uuid", d.UUID)
				}
			}
		}),
	m("device", "power_watts", "gauge", "Board power draw.",
		perDevice(func(d node.Device) float64 { return d.Sample.PowerWatts }, sampled)),
	m("device", "sm_clock_hertz", "gauge", "Current SM clock.",
		perDevice(func(d node.Device) float64 { return d.Sample.SMClockHertz }, sampled)),
	m("device", "temperature_celsius", "gauge", "GPU core temperature.",
		perDevice(func(d node.Device) float64 { return d.Sample.TemperatureCelsius }, sampled)),
	m("device", "utilization_ratio", "gauge", "Share of time the GPU was busy over the driver's last sampling period.",
		perDevice(func(d node.Device) float64 { return d.Sample.Utilization }, sampled)),
	m("device", "xid_errors_total", "counter", "Critical XID errors reported by the driver, by XID.", func(w *textWriter, v *view) {
		for _, d := range v.snap.Devices {
			if !gpu(d) {
				continue
			}
			xids := make([]uint64, 0, len(d.XIDs))
			for x := range d.XIDs {
				xids = append(xids, x)
			}
			slices.Sort(xids)
			for _, x := range xids {
				w.sample(float64(d.XIDs[x]), "gpu", strconv.Itoa(d.Index), "uuid", d.UUID, "xid", strconv.FormatUint(x, 10))
			}
		}
	}),
	m("enforcement", "available", "gauge",
		"1 when the tier (resource compute or memory) can engage on the node at all, 0 when not, with the reason; where compute reads 0 the node hands out shares it cannot hold, or, under --enforcement=required, offers no slices.",
		func(w *textWriter, v *view) {
			if v.e.info.Enforcement == nil {
				return
			}
			n := v.e.info.Enforcement.Node()
			for _, r := range byReason(n.Compute, n.Memory) {
				w.sample(bit(r.reason == enforce.ReasonEnforced), "resource", r.resource, "reason", r.reason)
			}
		}),
	m("enforcement", "cgroup_kills_total", "counter", "Times every process of the container's cgroup (its pod's, when held at the pod's level) was killed: it went over its GPU memory limit again, by processes not killed yet, in the sample after its newest GPU processes were killed.",
		perEnforced(func(st enforce.Stats) float64 { return float64(st.CgroupKills) })),
	m("enforcement", "compute_duty_ratio", "gauge", "Share of each throttle period the container may run; 1 when not throttled.",
		perEnforced(func(st enforce.Stats) float64 { return st.Duty })),
	m("enforcement", "driver_memory_limit_bytes", "gauge",
		"Hard GPU memory limit the driver enforces on the container's cgroup; absent where the driver tier does not hold it.", func(w *textWriter, v *view) {
			for i, c := range v.snap.Containers {
				if b, ok := v.enforced(c).DriverMemoryLimits[c.UUID]; ok {
					w.sampleSet(float64(b), v.ctrLabels[i])
				}
			}
		}),
	m("enforcement", "driver_memory_limit_operations_total", "counter",
		"Driver per-cgroup memory limit operations: set, cleared (soft limit zeroed before the cgroup went away), failed NVML calls, and uncleared cgroups removed with their soft limit still set.",
		func(w *textWriter, v *view) {
			if v.e.info.Enforcement == nil {
				return
			}
			if ds, ok := v.e.info.Enforcement.DriverStats(); ok {
				w.sample(float64(ds.Cleared), "result", "cleared")
				w.sample(float64(ds.Failed), "result", "failed")
				w.sample(float64(ds.Set), "result", "set")
				w.sample(float64(ds.Uncleared), "result", "uncleared")
			}
		}),
	m("enforcement", "enforced", "gauge",
		"1 when the container's compute share (resource compute) or GPU memory limit (resource memory) is held, 0 when not; reason is enforced (on slices of a MIG instance several containers share, by turns), pod-level (held with its pod's other containers, to their total), mig (a whole MIG instance, held by the hardware), or why not: disabled, report-only, cgroup-unresolved, no-freezer.",
		func(w *textWriter, v *view) {
			if v.e.info.Enforcement == nil {
				return
			}
			n := v.e.info.Enforcement.Node()
			for _, c := range v.snap.Containers {
				st, seen := v.stats[c.Cgroup.Key()]
				compute, memory := enforce.ContainerReasons(n, st, seen, c.Unknown != "")
				// Slices of an instance are held as a whole GPU's are (compute
				// in turns where their use cannot be measured); a whole
				// instance, by the hardware.
				if d := v.device(c.UUID); d != nil && d.Instance != nil && d.Slices == 0 {
					compute, memory = enforce.ReasonMIG, enforce.ReasonMIG
				}
				idx := strconv.Itoa(c.Index)
				for _, r := range byReason(compute, memory) {
					w.sample(bit(enforce.Held(r.reason)), "namespace", c.Namespace, "pod", c.Pod, "container", c.Container, "gpu", idx, "uuid", c.UUID,
						"resource", r.resource, "reason", r.reason)
				}
			}
		}),
	m("enforcement", "failures_total", "counter", "Containers that could not be enforced and cgroups that vanished under a throttle.", func(w *textWriter, v *view) {
		if v.e.info.Enforcement != nil {
			w.sample(float64(v.e.info.Enforcement.Failures()))
		}
	}),
	m("enforcement", "kills_total", "counter", "GPU processes of the container killed for exceeding its memory limit.",
		perEnforced(func(st enforce.Stats) float64 { return float64(st.Kills) })),
	m("enforcement", "memory_limit_events_total", "counter", "Times the container went over its GPU memory limit.",
		perEnforced(func(st enforce.Stats) float64 { return float64(st.MemoryEvents) })),
	m("enforcement", "throttled_seconds_total", "counter", "Time the container's cgroup was frozen to keep it inside its compute share.",
		perEnforced(func(st enforce.Stats) float64 { return st.Throttled.Seconds() })),
	m("enforcement", "tier", "gauge", "The mechanism holding each resource on the GPU; always 1.", func(w *textWriter, v *view) {
		if v.e.info.Enforcement == nil {
			return
		}
		compute, memory := v.e.info.Enforcement.Tiers()
		for _, d := range v.snap.Devices {
			if !gpu(d) {
				continue
			}
			idx := strconv.Itoa(d.Index)
			w.sample(1, "gpu", idx, "uuid", d.UUID, "resource", "compute", "tier", compute)
			w.sample(1, "gpu", idx, "uuid", d.UUID, "resource", "memory", "tier", memory)
		}
	}),
	m("mig", "instance_healthy", "gauge", "1 if the MIG instance is offered Healthy, 0 if not: its GPU is unhealthy, or the driver put an XID on the instance itself.",
		func(w *textWriter, v *view) {
			if v.e.info.Healthy == nil {
				return
			}
			for _, d := range v.mig {
				if !d.MIG.Current {
					continue
				}
				byUUID := slices.SortedFunc(slices.Values(d.MIG.Instances), func(a, b nvml.MIGInstance) int { return strings.Compare(a.UUID, b.UUID) })
				for _, in := range byUUID {
					w.sample(bit(v.e.info.Healthy(in.UUID, d.UUID)), "gpu", strconv.Itoa(d.Index), "mig_uuid", in.UUID, "uuid", d.UUID)
				}
			}
		}),
	m("mig", "instance_info", "gauge", "A MIG instance in force on the GPU, with its profile and the resource it is offered under; always 1.",
		func(w *textWriter, v *view) {
			for _, d := range v.mig {
				if !d.MIG.Current {
					continue
				}
				for _, in := range sortedInstances(d) {
					w.sample(1, "gpu", strconv.Itoa(d.Index), "mig_profile", in.Profile, "mig_uuid", in.UUID,
						"resource", v.migResource(in.Profile), "uuid", d.UUID)
				}
			}
		}),
	m("mig", "instance_memory_used_bytes", "gauge",
		"Framebuffer memory in use on the MIG instance, as the driver reports it for the instance.",
		func(w *textWriter, v *view) {
			for _, d := range v.instancesByLabel() {
				if d.SampleOK {
					w.sample(float64(d.Sample.MemoryUsedBytes), "gpu", strconv.Itoa(d.Index), "mig_uuid", d.UUID, "uuid", d.Instance.Parent.UUID)
				}
			}
		}),
	m("slices", "allocated", "gauge", "Slices of the GPU held by containers.",
		perDevice(func(d node.Device) float64 { return float64(d.Allocated) }, gpu)),
	m("slices", "capacity", "gauge", "Slices the GPU is cut into.",
		perDevice(func(d node.Device) float64 { return float64(d.Slices) }, gpu)),
}
