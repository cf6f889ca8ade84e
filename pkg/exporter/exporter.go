package exporter

import (
	"runtime"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/sampler"
)

// Namespace prefixes every metric.
const Namespace = "gpuslice"

// Source gives the latest snapshot.
type Source interface {
	Snapshot() *sampler.Snapshot
}

// Enforcement reports what enforcement did, by container ID, and which
// mechanisms it uses.
type Enforcement interface {
	Stats() map[string]enforce.Stats
	Failures() uint64
	Tiers() (compute, memory string)
	DriverStats() (enforce.DriverStats, bool)
}

// Info is static information about the agent and its node, and where
// enforcement statistics come from (nil: none yet).
type Info struct {
	Version     string
	System      nvml.SystemInfo
	Enforcement Enforcement
	// MPS is true when MPS limits hold compute.
	MPS bool
}

// NewRegistry returns a registry holding every gpuslice collector over src.
func NewRegistry(src Source, info Info) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(
		newDeviceCollector(src, info.System),
		newSliceCollector(src),
		newContainerCollector(src),
		newEnforcementCollector(src, info.Enforcement, info.MPS),
		newAgentCollector(src, info.Version),
	)
	return r
}

func desc(subsystem, name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystem, name), help, labels, nil)
}

var gpuLabels = []string{"gpu", "uuid"}

func gpuValues(d sampler.Device) []string { return []string{strconv.Itoa(d.Index), d.UUID} }

// deviceCollector exports each GPU's state.
type deviceCollector struct {
	src                                                                Source
	system                                                             nvml.SystemInfo
	info, memTotal, memUsed, util, temp, power, energy, clock, ok, xid *prometheus.Desc
}

func newDeviceCollector(src Source, system nvml.SystemInfo) *deviceCollector {
	return &deviceCollector{
		src: src, system: system,
		info:     desc("device", "info", "GPU identity; always 1.", "gpu", "uuid", "model", "pci_bus_id", "driver_version", "cuda_version"),
		memTotal: desc("device", "memory_total_bytes", "GPU framebuffer memory.", gpuLabels...),
		memUsed:  desc("device", "memory_used_bytes", "GPU framebuffer memory in use.", gpuLabels...),
		util:     desc("device", "utilization_ratio", "Share of time the GPU was busy over the driver's last sampling period.", gpuLabels...),
		temp:     desc("device", "temperature_celsius", "GPU core temperature.", gpuLabels...),
		power:    desc("device", "power_watts", "Board power draw.", gpuLabels...),
		energy:   desc("device", "energy_joules_total", "Energy used since the driver was loaded.", gpuLabels...),
		clock:    desc("device", "sm_clock_hertz", "Current SM clock.", gpuLabels...),
		ok:       desc("device", "healthy", "1 if the GPU's slices are offered as Healthy, 0 if not.", gpuLabels...),
		xid:      desc("device", "xid_errors_total", "Critical XID errors reported by the driver, by XID.", "gpu", "uuid", "xid"),
	}
}

func (c *deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.memTotal, c.memUsed, c.util, c.temp, c.power, c.energy, c.clock, c.ok, c.xid} {
		ch <- d
	}
}

func (c *deviceCollector) Collect(ch chan<- prometheus.Metric) {
	cuda := ""
	if c.system.CUDADriverVersion > 0 {
		cuda = c.system.CUDAVersion()
	}
	for _, d := range c.src.Snapshot().Devices {
		l := gpuValues(d)
		ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, l[0], l[1], d.Model, d.PCIBusID, c.system.DriverVersion, cuda)
		ch <- prometheus.MustNewConstMetric(c.memTotal, prometheus.GaugeValue, float64(d.MemoryBytes), l...)
		healthy := 0.0
		if d.Health.Healthy {
			healthy = 1
		}
		ch <- prometheus.MustNewConstMetric(c.ok, prometheus.GaugeValue, healthy, l...)
		for x, n := range d.XIDs {
			ch <- prometheus.MustNewConstMetric(c.xid, prometheus.CounterValue, float64(n), l[0], l[1], strconv.FormatUint(x, 10))
		}
		if !d.SampleOK {
			// No reading this round: leave the series out rather than
			// report a made-up zero.
			continue
		}
		s := d.Sample
		ch <- prometheus.MustNewConstMetric(c.memUsed, prometheus.GaugeValue, float64(s.MemoryUsedBytes), l...)
		ch <- prometheus.MustNewConstMetric(c.util, prometheus.GaugeValue, s.Utilization, l...)
		ch <- prometheus.MustNewConstMetric(c.temp, prometheus.GaugeValue, s.TemperatureCelsius, l...)
		ch <- prometheus.MustNewConstMetric(c.power, prometheus.GaugeValue, s.PowerWatts, l...)
		ch <- prometheus.MustNewConstMetric(c.energy, prometheus.CounterValue, s.EnergyJoules, l...)
		ch <- prometheus.MustNewConstMetric(c.clock, prometheus.GaugeValue, s.SMClockHertz, l...)
	}
}

// sliceCollector exports how each GPU is cut and how much of it is held.
type sliceCollector struct {
	src              Source
	total, allocated *prometheus.Desc
}

func newSliceCollector(src Source) *sliceCollector {
	return &sliceCollector{
		src:       src,
		total:     desc("slices", "capacity", "Slices the GPU is cut into.", gpuLabels...),
		allocated: desc("slices", "allocated", "Slices of the GPU held by containers.", gpuLabels...),
	}
}

func (c *sliceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.total
	ch <- c.allocated
}

func (c *sliceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, d := range c.src.Snapshot().Devices {
		ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(d.Slices), gpuValues(d)...)
		ch <- prometheus.MustNewConstMetric(c.allocated, prometheus.GaugeValue, float64(d.Allocated), gpuValues(d)...)
	}
}

var containerLabels = []string{"namespace", "pod", "container", "gpu", "uuid"}

func containerValues(c sampler.Container) []string {
	return []string{c.Namespace, c.Pod, c.Container, strconv.Itoa(c.Index), c.GPU}
}

// containerCollector exports each container's share of each GPU it holds
// slices of, measured from its own processes.
type containerCollector struct {
	src                                                                       Source
	slices, memLimit, memUsed, compLimit, util, utilOfLimit, busy, lastActive *prometheus.Desc
}

func newContainerCollector(src Source) *containerCollector {
	return &containerCollector{
		src:         src,
		slices:      desc("container", "slices", "Slices of the GPU the container holds.", containerLabels...),
		memLimit:    desc("container", "memory_limit_bytes", "GPU memory the container's slices allow.", containerLabels...),
		memUsed:     desc("container", "memory_used_bytes", "GPU memory held by the container's processes.", containerLabels...),
		compLimit:   desc("container", "compute_limit_ratio", "Share of the GPU's compute the container's slices allow.", containerLabels...),
		util:        desc("container", "sm_utilization_ratio", "Share of the GPU's SM time used by the container's processes.", containerLabels...),
		utilOfLimit: desc("container", "sm_utilization_of_limit_ratio", "SM utilization relative to the container's compute limit; above 1 when it bursts into idle GPU time.", containerLabels...),
		busy:        desc("container", "gpu_busy_seconds_total", "GPU time used by the container's processes: SM utilization integrated over time.", containerLabels...),
		lastActive:  desc("container", "last_active_timestamp_seconds", "Last time the container's processes used the GPU.", containerLabels...),
	}
}

func (c *containerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.slices, c.memLimit, c.memUsed, c.compLimit, c.util, c.utilOfLimit, c.busy, c.lastActive} {
		ch <- d
	}
}

func (c *containerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, ctr := range c.src.Snapshot().Containers {
		l := containerValues(ctr)
		ch <- prometheus.MustNewConstMetric(c.slices, prometheus.GaugeValue, float64(ctr.Slices), l...)
		ch <- prometheus.MustNewConstMetric(c.memLimit, prometheus.GaugeValue, float64(ctr.MemoryLimitBytes), l...)
		ch <- prometheus.MustNewConstMetric(c.compLimit, prometheus.GaugeValue, ctr.ComputeLimitRatio, l...)
		if ctr.Blind {
			// Its GPU's processes could not be listed: its use is unknown,
			// and a zero here would read as an idle pod downstream.
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.memUsed, prometheus.GaugeValue, float64(ctr.MemoryUsedBytes), l...)
		ch <- prometheus.MustNewConstMetric(c.util, prometheus.GaugeValue, ctr.SMUtilization, l...)
		if ctr.ComputeLimitRatio > 0 {
			ch <- prometheus.MustNewConstMetric(c.utilOfLimit, prometheus.GaugeValue, ctr.SMUtilization/ctr.ComputeLimitRatio, l...)
		}
		ch <- prometheus.MustNewConstMetric(c.busy, prometheus.CounterValue, ctr.BusySeconds, l...)
		if !ctr.LastActive.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.lastActive, prometheus.GaugeValue, float64(ctr.LastActive.UnixMilli())/1000, l...)
		}
	}
}

// enforcementCollector exports what enforcement did to each container.
type enforcementCollector struct {
	src                                                Source
	enf                                                Enforcement
	throttled, duty, inForce, kills, limit, fail, tier *prometheus.Desc
	driverLimit, driverOps                             *prometheus.Desc
	mps                                                bool
}

func newEnforcementCollector(src Source, enf Enforcement, mps bool) *enforcementCollector {
	return &enforcementCollector{
		src: src, enf: enf, mps: mps,
		tier:      desc("enforcement", "tier", "The mechanism holding each resource on the GPU; always 1.", "gpu", "uuid", "resource", "tier"),
		throttled: desc("enforcement", "throttled_seconds_total", "Time the container's cgroup was frozen to keep it inside its compute share.", containerLabels...),
		duty:      desc("enforcement", "compute_duty_ratio", "Share of each throttle period the container may run; 1 when not throttled.", containerLabels...),
		inForce:   desc("enforcement", "limits_in_force", "1 if the agent can act on the container's cgroup, 0 if its limits are not enforced.", containerLabels...),
		kills:     desc("enforcement", "kills_total", "GPU processes of the container killed for exceeding its memory limit.", containerLabels...),
		limit:     desc("enforcement", "memory_limit_events_total", "Times the container went over its GPU memory limit.", containerLabels...),
		fail:      desc("enforcement", "failures_total", "Containers that could not be enforced and cgroups that vanished under a throttle."),
		driverLimit: desc("enforcement", "driver_memory_limit_bytes", "Hard GPU memory limit the driver enforces on the container's cgroup; absent where the driver tier does not hold it.",
			containerLabels...),
		driverOps: desc("enforcement", "driver_memory_limit_operations_total",
			"Driver per-cgroup memory limit operations: set, cleared (soft limit zeroed before the cgroup went away), failed NVML calls, and uncleared cgroups removed with their soft limit still set.", "result"),
	}
}

func (c *enforcementCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.throttled, c.duty, c.inForce, c.kills, c.limit, c.fail, c.tier, c.driverLimit, c.driverOps} {
		ch <- d
	}
}

func (c *enforcementCollector) Collect(ch chan<- prometheus.Metric) {
	var stats map[string]enforce.Stats
	snap := c.src.Snapshot()
	if c.enf != nil {
		stats = c.enf.Stats()
		ch <- prometheus.MustNewConstMetric(c.fail, prometheus.CounterValue, float64(c.enf.Failures()))
		compute, memory := c.enf.Tiers()
		if c.mps {
			compute = "mps"
		}
		for _, d := range snap.Devices {
			l := gpuValues(d)
			ch <- prometheus.MustNewConstMetric(c.tier, prometheus.GaugeValue, 1, l[0], l[1], "compute", compute)
			ch <- prometheus.MustNewConstMetric(c.tier, prometheus.GaugeValue, 1, l[0], l[1], "memory", memory)
		}
		if ds, ok := c.enf.DriverStats(); ok {
			for _, v := range []struct {
				result string
				n      uint64
			}{{"set", ds.Set}, {"cleared", ds.Cleared}, {"failed", ds.Failed}, {"uncleared", ds.Uncleared}} {
				ch <- prometheus.MustNewConstMetric(c.driverOps, prometheus.CounterValue, float64(v.n), v.result)
			}
		}
	}
	for _, ctr := range snap.Containers {
		l := containerValues(ctr)
		st, known := stats[ctr.Cgroup.Key()]
		if !known {
			st = enforce.Stats{Duty: 1}
		}
		inForce := 0.0
		if st.InForce {
			inForce = 1
		}
		ch <- prometheus.MustNewConstMetric(c.throttled, prometheus.CounterValue, st.Throttled.Seconds(), l...)
		ch <- prometheus.MustNewConstMetric(c.duty, prometheus.GaugeValue, st.Duty, l...)
		ch <- prometheus.MustNewConstMetric(c.inForce, prometheus.GaugeValue, inForce, l...)
		ch <- prometheus.MustNewConstMetric(c.kills, prometheus.CounterValue, float64(st.Kills), l...)
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.CounterValue, float64(st.MemoryEvents), l...)
		if b, ok := st.DriverMemoryLimits[ctr.GPU]; ok {
			ch <- prometheus.MustNewConstMetric(c.driverLimit, prometheus.GaugeValue, float64(b), l...)
		}
	}
}

// agentCollector exports the agent's own health.
type agentCollector struct {
	src                                               Source
	version                                           string
	build, duration, errors, unattributed, lastSample *prometheus.Desc
	unauthorized, blind                               *prometheus.Desc
}

func newAgentCollector(src Source, version string) *agentCollector {
	return &agentCollector{
		src: src, version: version,
		build:        desc("", "build_info", "The agent's build; always 1.", "version", "goversion"),
		duration:     desc("agent", "sample_duration_seconds", "Time one sample of the node took."),
		errors:       desc("agent", "errors_total", "Failed reads while sampling, by source.", "source"),
		unattributed: desc("agent", "unattributed_processes", "GPU processes in the last sample that no container holding slices could be found for.", gpuLabels...),
		lastSample:   desc("agent", "last_sample_timestamp_seconds", "When the last sample was taken."),
		unauthorized: desc("agent", "unauthorized_processes",
			"GPU processes in the last sample that run in a pod whose container holds no slice of the GPU.", gpuLabels...),
		blind: desc("agent", "gpu_blind",
			"1 when the GPU's readings or process list failed in the last sample: its containers' use series are absent, not zero, and their throttles hold; 0 otherwise.",
			gpuLabels...),
	}
}

func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.build, c.duration, c.errors, c.unattributed, c.lastSample, c.unauthorized, c.blind} {
		ch <- d
	}
}

func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	ch <- prometheus.MustNewConstMetric(c.build, prometheus.GaugeValue, 1, c.version, runtime.Version())
	buckets := make(map[float64]uint64, len(sampler.DurationBuckets))
	for i, b := range sampler.DurationBuckets {
		if i < len(s.Durations.Counts) {
			buckets[b] = s.Durations.Counts[i]
		}
	}
	ch <- prometheus.MustNewConstHistogram(c.duration, s.Durations.Count, s.Durations.Sum, buckets)
	for _, src := range []string{sampler.SourceNVML, sampler.SourcePodResources, sampler.SourceCheckpoint, sampler.SourceProc} {
		ch <- prometheus.MustNewConstMetric(c.errors, prometheus.CounterValue, float64(s.Errors[src]), src)
	}
	perGPU := map[string]int{}
	for _, u := range s.Unattributed {
		perGPU[u.GPU]++
	}
	denied := map[string]int{}
	for _, u := range s.Unauthorized {
		denied[u.GPU]++
	}
	for _, d := range s.Devices {
		ch <- prometheus.MustNewConstMetric(c.unattributed, prometheus.GaugeValue, float64(perGPU[d.UUID]), gpuValues(d)...)
		ch <- prometheus.MustNewConstMetric(c.unauthorized, prometheus.GaugeValue, float64(denied[d.UUID]), gpuValues(d)...)
		b := 0.0
		if d.Blind() {
			b = 1
		}
		ch <- prometheus.MustNewConstMetric(c.blind, prometheus.GaugeValue, b, gpuValues(d)...)
	}
	if !s.Time.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.lastSample, prometheus.GaugeValue, float64(s.Time.UnixMilli())/1000)
	}
}
