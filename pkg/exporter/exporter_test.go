package exporter

import (
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

type fixed struct{ s *node.Snapshot }

func (f fixed) Snapshot() *node.Snapshot { return f.s }

// enforcement is what enforcement did in the fixture: container a is
// throttled, b is unknown to it.
type enforcement struct{}

func (enforcement) Stats() map[string]enforce.Stats {
	return map[string]enforce.Stats{cidA: {Throttled: 2500 * time.Millisecond, Duty: 0.4, Compute: enforce.ReasonEnforced, Memory: enforce.ReasonEnforced, DriverMemoryLimits: map[string]uint64{"GPU-aaa": 10 << 30}}}
}

func (enforcement) DriverStats() (enforce.DriverStats, bool) {
	return enforce.DriverStats{Set: 4, Cleared: 2, Failed: 1}, true
}

func (enforcement) Failures() uint64 { return 1 }

func (enforcement) Generation() uint64 { return 7 }

// generations is enforcement whose published view changes when gen does.
type generations struct {
	enforcement
	gen *atomic.Uint64
}

func (g generations) Generation() uint64 { return g.gen.Load() }

// swapped is a source whose snapshot is replaced, as the sampler's is.
type swapped struct {
	p *atomic.Pointer[node.Snapshot]
}

func (s swapped) Snapshot() *node.Snapshot { return s.p.Load() }

// TestExpositionKey: the exposition names its own freshness (the sample
// and enforcement's published generation), so a new sample or a new
// enforcement view renders again and nothing else does.
func TestExpositionKey(t *testing.T) {
	t.Parallel()
	var snap atomic.Pointer[node.Snapshot]
	snap.Store(snapshot())
	var gen atomic.Uint64
	e := NewExposition(swapped{&snap}, Info{Enforcement: generations{gen: &gen}})
	k0 := e.Key()
	if e.Key() != k0 {
		t.Fatal("the key changed with nothing new")
	}
	snap.Store(snapshot())
	k1 := e.Key()
	if k1 == k0 {
		t.Error("a new sample kept the key")
	}
	gen.Add(1)
	if e.Key() == k1 {
		t.Error("a new enforcement view kept the key")
	}
}

func (enforcement) Tiers() (string, string) { return "freezer", "driver" }

// Node: the fixture's node has no freezer, so b, whose processes it has
// not seen, reads unenforced as the node does.
func (enforcement) Node() enforce.NodeState {
	return enforce.NodeState{Compute: enforce.ReasonNoFreezer, Memory: enforce.ReasonEnforced}
}

const cidA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func snapshot() *node.Snapshot {
	counts := make([]uint64, len(node.DurationBuckets))
	for i := range counts {
		counts[i] = 3
	}
	counts[0], counts[1] = 1, 2
	return &node.Snapshot{
		Time: time.Unix(1700000001, 0),
		Devices: []node.Device{
			{
				Device:      nvml.Device{UUID: "GPU-aaa", Index: 0, Model: "NVIDIA A100-SXM4-40GB", MemoryBytes: 42949672960, PCIBusID: "00000000:07:00.0"},
				Sample:      nvml.Sample{UUID: "GPU-aaa", Utilization: 0.7, MemoryUsedBytes: 3221225472, TemperatureCelsius: 61.5, PowerWatts: 313, EnergyJoules: 12345.5, SMClockHertz: 1.41e9},
				SampleOK:    true,
				ProcessesOK: true,
				Health:      nvml.Health{UUID: "GPU-aaa", Healthy: true},
				XIDs:        map[uint64]uint64{79: 2},
				Slices:      8, Allocated: 5,
			},
			{
				Device: nvml.Device{UUID: "GPU-bbb", Index: 1, Model: "NVIDIA A100-SXM4-40GB", MemoryBytes: 42949672960, PCIBusID: "00000000:17:00.0"},
				Health: nvml.Health{UUID: "GPU-bbb", Reason: nvml.ReasonLost},
				Slices: 8,
			},
			{
				// A MIG instance of GPU 2 (migGPUs), read as a device: its
				// memory is measured, its compute is not.
				Device:   nvml.Device{UUID: "MIG-111", Index: 2, MemoryBytes: 42949672960 / 2},
				Instance: &nvml.InForce{MIGInstance: migGPUs[2].MIG.Instances[0], Parent: migGPUs[2]},
				Sample:   nvml.Sample{UUID: "MIG-111", MemoryUsedBytes: 4294967296, ProcessUtilizationUnsupported: true, UtilizationUnsupported: true}, SampleOK: true, ProcessesOK: true,
				Health: nvml.Health{UUID: "MIG-111", Healthy: true},
			},
		},
		Containers: []node.Container{
			{Namespace: "ml", Pod: "a", Container: "main", UUID: "GPU-aaa", Index: 0, Slices: 2, MemoryLimitBytes: 10737418240, ComputeLimitRatio: 0.25,
				MemoryUsedBytes: 1073741824, SMUtilization: 0.2, BusySeconds: 12.5, LastActive: time.Unix(1700000000, 500e6), Processes: 1,
				Cgroup: node.Cgroup{ContainerID: cidA}},
			{Namespace: "ml", Pod: "b", Container: "main", UUID: "GPU-aaa", Index: 0, Slices: 3, Claims: []string{"ml/gpu"}, MemoryLimitBytes: 16106127360, ComputeLimitRatio: 0.375,
				MemoryUsedBytes: 2147483648, SMUtilization: 0.5, BusySeconds: 30},
			{Namespace: "ml", Pod: "c", Container: "main", UUID: "MIG-111", Index: 2, Slices: 1, MemoryLimitBytes: 42949672960 / 2, ComputeLimitRatio: 1,
				MemoryUsedBytes: 4294967296, Processes: 1, ComputeUnmeasured: true},
		},
		Unattributed: []node.Unattributed{{GPUProcess: node.GPUProcess{PID: 7, UUID: "GPU-aaa"}, Reason: "not in a pod or container"}},
		Unauthorized: []node.Unauthorized{{GPUProcess: node.GPUProcess{PID: 9, UUID: "GPU-aaa"}, Namespace: "lab", Pod: "x", Reason: "its pod holds no slices of this GPU"}},
		Errors:       map[string]uint64{node.SourceNVML: 1, node.SourcePodResources: 2},
		Durations:    node.Histogram{Counts: counts, Count: 3, Sum: 0.006},
	}
}

const wantDevices = `
# HELP gpuslice_device_energy_joules_total Energy used since the driver was loaded.
# TYPE gpuslice_device_energy_joules_total counter
gpuslice_device_energy_joules_total{gpu="0",uuid="GPU-aaa"} 12345.5
# HELP gpuslice_device_healthy 1 if the GPU's slices are offered as Healthy, 0 if not.
# TYPE gpuslice_device_healthy gauge
gpuslice_device_healthy{gpu="0",uuid="GPU-aaa"} 1
gpuslice_device_healthy{gpu="1",uuid="GPU-bbb"} 0
# HELP gpuslice_device_info GPU identity; always 1.
# TYPE gpuslice_device_info gauge
gpuslice_device_info{cuda_version="12.8",driver_version="570.124.06",gpu="0",model="NVIDIA A100-SXM4-40GB",pci_bus_id="00000000:07:00.0",uuid="GPU-aaa"} 1
gpuslice_device_info{cuda_version="12.8",driver_version="570.124.06",gpu="1",model="NVIDIA A100-SXM4-40GB",pci_bus_id="00000000:17:00.0",uuid="GPU-bbb"} 1
# HELP gpuslice_device_memory_total_bytes GPU framebuffer memory.
# TYPE gpuslice_device_memory_total_bytes gauge
gpuslice_device_memory_total_bytes{gpu="0",uuid="GPU-aaa"} 4.294967296e+10
gpuslice_device_memory_total_bytes{gpu="1",uuid="GPU-bbb"} 4.294967296e+10
# HELP gpuslice_device_memory_used_bytes GPU framebuffer memory in use.
# TYPE gpuslice_device_memory_used_bytes gauge
gpuslice_device_memory_used_bytes{gpu="0",uuid="GPU-aaa"} 3.221225472e+09
# HELP gpuslice_device_power_watts Board power draw.
# TYPE gpuslice_device_power_watts gauge
gpuslice_device_power_watts{gpu="0",uuid="GPU-aaa"} 313
# HELP gpuslice_device_sm_clock_hertz Current SM clock.
# TYPE gpuslice_device_sm_clock_hertz gauge
gpuslice_device_sm_clock_hertz{gpu="0",uuid="GPU-aaa"} 1.41e+09
# HELP gpuslice_device_temperature_celsius GPU core temperature.
# TYPE gpuslice_device_temperature_celsius gauge
gpuslice_device_temperature_celsius{gpu="0",uuid="GPU-aaa"} 61.5
# HELP gpuslice_device_utilization_ratio Share of time the GPU was busy over the driver's last sampling period.
# TYPE gpuslice_device_utilization_ratio gauge
gpuslice_device_utilization_ratio{gpu="0",uuid="GPU-aaa"} 0.7
# HELP gpuslice_device_xid_errors_total Critical XID errors reported by the driver, by XID.
# TYPE gpuslice_device_xid_errors_total counter
gpuslice_device_xid_errors_total{gpu="0",uuid="GPU-aaa",xid="79"} 2
# HELP gpuslice_slices_allocated Slices of the GPU held by containers.
# TYPE gpuslice_slices_allocated gauge
gpuslice_slices_allocated{gpu="0",uuid="GPU-aaa"} 5
gpuslice_slices_allocated{gpu="1",uuid="GPU-bbb"} 0
# HELP gpuslice_slices_capacity Slices the GPU is cut into.
# TYPE gpuslice_slices_capacity gauge
gpuslice_slices_capacity{gpu="0",uuid="GPU-aaa"} 8
gpuslice_slices_capacity{gpu="1",uuid="GPU-bbb"} 8
`

const wantContainers = `
# HELP gpuslice_container_claim_info A DRA claim (of gpuslice's driver) through which the container holds the GPU; always 1. Absent for nvidia.com/vgpu slices.
# TYPE gpuslice_container_claim_info gauge
gpuslice_container_claim_info{claim="gpu",claim_namespace="ml",container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 1
# HELP gpuslice_container_compute_limit_ratio Share of the GPU's compute the container's slices allow.
# TYPE gpuslice_container_compute_limit_ratio gauge
gpuslice_container_compute_limit_ratio{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 0.25
gpuslice_container_compute_limit_ratio{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 0.375
gpuslice_container_compute_limit_ratio{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 1
# HELP gpuslice_container_compute_unmeasured 1 when the container's compute use on the device cannot be measured (a MIG instance, where NVML measures no process: on a GPU without GPM, before Hopper, or one several containers hold), so its SM utilization, busy time and last activity are absent, never zero, while its memory is measured; 0 otherwise.
# TYPE gpuslice_container_compute_unmeasured gauge
gpuslice_container_compute_unmeasured{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 0
gpuslice_container_compute_unmeasured{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 0
gpuslice_container_compute_unmeasured{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 1
# HELP gpuslice_container_gpu_busy_seconds_total GPU time used by the container's processes: SM utilization integrated over time.
# TYPE gpuslice_container_gpu_busy_seconds_total counter
gpuslice_container_gpu_busy_seconds_total{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 12.5
gpuslice_container_gpu_busy_seconds_total{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 30
# HELP gpuslice_container_last_active_timestamp_seconds Last time the container's processes used the GPU.
# TYPE gpuslice_container_last_active_timestamp_seconds gauge
gpuslice_container_last_active_timestamp_seconds{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 1.7000000005e+09
# HELP gpuslice_container_memory_limit_bytes GPU memory the container's slices allow.
# TYPE gpuslice_container_memory_limit_bytes gauge
gpuslice_container_memory_limit_bytes{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 1.073741824e+10
gpuslice_container_memory_limit_bytes{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 1.610612736e+10
gpuslice_container_memory_limit_bytes{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 2.147483648e+10
# HELP gpuslice_container_memory_used_bytes GPU memory held by the container's processes.
# TYPE gpuslice_container_memory_used_bytes gauge
gpuslice_container_memory_used_bytes{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 1.073741824e+09
gpuslice_container_memory_used_bytes{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 2.147483648e+09
gpuslice_container_memory_used_bytes{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 4.294967296e+09
# HELP gpuslice_container_mig_info The MIG instance the container holds (uuid is the instance's MIG UUID, parent_uuid its GPU's), with its profile; always 1. Absent for slices of a whole GPU.
# TYPE gpuslice_container_mig_info gauge
gpuslice_container_mig_info{container="main",gpu="2",mig_profile="3g.40gb",namespace="ml",parent_uuid="GPU-ccc",pod="c",uuid="MIG-111"} 1
# HELP gpuslice_container_slices Slices of the GPU the container holds.
# TYPE gpuslice_container_slices gauge
gpuslice_container_slices{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 2
gpuslice_container_slices{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 3
gpuslice_container_slices{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 1
# HELP gpuslice_container_sm_utilization_of_limit_ratio SM utilization relative to the container's compute limit; above 1 when it bursts into idle GPU time.
# TYPE gpuslice_container_sm_utilization_of_limit_ratio gauge
gpuslice_container_sm_utilization_of_limit_ratio{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 0.8
gpuslice_container_sm_utilization_of_limit_ratio{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 1.3333333333333333
# HELP gpuslice_container_sm_utilization_ratio Share of the GPU's SM time used by the container's processes.
# TYPE gpuslice_container_sm_utilization_ratio gauge
gpuslice_container_sm_utilization_ratio{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 0.2
gpuslice_container_sm_utilization_ratio{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 0.5
# HELP gpuslice_container_use_unknown 1 when the container's use of the GPU cannot be told: a process of its pod on the GPU could not be placed in one of its containers, so its use series are absent (never zero) and its pod is held at the pod's level; 0 otherwise.
# TYPE gpuslice_container_use_unknown gauge
gpuslice_container_use_unknown{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 0
gpuslice_container_use_unknown{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 0
gpuslice_container_use_unknown{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 0
# HELP gpuslice_enforcement_available 1 when the tier (resource compute or memory) can engage on the node at all, 0 when not, with the reason; where compute reads 0 the node hands out shares it cannot hold, or, under --enforcement=required, offers no slices.
# TYPE gpuslice_enforcement_available gauge
gpuslice_enforcement_available{reason="enforced",resource="memory"} 1
gpuslice_enforcement_available{reason="no-freezer",resource="compute"} 0
# HELP gpuslice_enforcement_cgroup_kills_total Times every process of the container's cgroup (its pod's, when held at the pod's level) was killed: it went over its GPU memory limit again, by processes not killed yet, in the sample after its newest GPU processes were killed.
# TYPE gpuslice_enforcement_cgroup_kills_total counter
gpuslice_enforcement_cgroup_kills_total{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 0
gpuslice_enforcement_cgroup_kills_total{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 0
gpuslice_enforcement_cgroup_kills_total{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 0
# HELP gpuslice_enforcement_compute_duty_ratio Share of each throttle period the container may run; 1 when not throttled.
# TYPE gpuslice_enforcement_compute_duty_ratio gauge
gpuslice_enforcement_compute_duty_ratio{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 0.4
gpuslice_enforcement_compute_duty_ratio{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 1
gpuslice_enforcement_compute_duty_ratio{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 1
# HELP gpuslice_enforcement_driver_memory_limit_bytes Hard GPU memory limit the driver enforces on the container's cgroup; absent where the driver tier does not hold it.
# TYPE gpuslice_enforcement_driver_memory_limit_bytes gauge
gpuslice_enforcement_driver_memory_limit_bytes{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 1.073741824e+10
# HELP gpuslice_enforcement_driver_memory_limit_operations_total Driver per-cgroup memory limit operations: set, cleared (soft limit zeroed before the cgroup went away), failed NVML calls, and uncleared cgroups removed with their soft limit still set.
# TYPE gpuslice_enforcement_driver_memory_limit_operations_total counter
gpuslice_enforcement_driver_memory_limit_operations_total{result="cleared"} 2
gpuslice_enforcement_driver_memory_limit_operations_total{result="failed"} 1
gpuslice_enforcement_driver_memory_limit_operations_total{result="set"} 4
gpuslice_enforcement_driver_memory_limit_operations_total{result="uncleared"} 0
# HELP gpuslice_enforcement_enforced 1 when the container's compute share (resource compute) or GPU memory limit (resource memory) is held, 0 when not; reason is enforced (on slices of a MIG instance several containers share, by turns), pod-level (held with its pod's other containers, to their total), mig (a whole MIG instance, held by the hardware), or why not: disabled, report-only, cgroup-unresolved, no-freezer.
# TYPE gpuslice_enforcement_enforced gauge
gpuslice_enforcement_enforced{container="main",gpu="0",namespace="ml",pod="a",reason="enforced",resource="compute",uuid="GPU-aaa"} 1
gpuslice_enforcement_enforced{container="main",gpu="0",namespace="ml",pod="a",reason="enforced",resource="memory",uuid="GPU-aaa"} 1
gpuslice_enforcement_enforced{container="main",gpu="0",namespace="ml",pod="b",reason="enforced",resource="memory",uuid="GPU-aaa"} 1
gpuslice_enforcement_enforced{container="main",gpu="0",namespace="ml",pod="b",reason="no-freezer",resource="compute",uuid="GPU-aaa"} 0
gpuslice_enforcement_enforced{container="main",gpu="2",namespace="ml",pod="c",reason="mig",resource="compute",uuid="MIG-111"} 1
gpuslice_enforcement_enforced{container="main",gpu="2",namespace="ml",pod="c",reason="mig",resource="memory",uuid="MIG-111"} 1
# HELP gpuslice_enforcement_failures_total Containers that could not be enforced and cgroups that vanished under a throttle.
# TYPE gpuslice_enforcement_failures_total counter
gpuslice_enforcement_failures_total 1
# HELP gpuslice_enforcement_kills_total GPU processes of the container killed for exceeding its memory limit.
# TYPE gpuslice_enforcement_kills_total counter
gpuslice_enforcement_kills_total{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 0
gpuslice_enforcement_kills_total{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 0
gpuslice_enforcement_kills_total{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 0
# HELP gpuslice_enforcement_throttled_seconds_total Time the container's cgroup was frozen to keep it inside its compute share.
# TYPE gpuslice_enforcement_throttled_seconds_total counter
gpuslice_enforcement_throttled_seconds_total{container="main",gpu="0",namespace="ml",pod="a",uuid="GPU-aaa"} 2.5
gpuslice_enforcement_throttled_seconds_total{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 0
gpuslice_enforcement_throttled_seconds_total{container="main",gpu="2",gpu_fraction="0.5",namespace="ml",pod="c",uuid="MIG-111"} 0
# HELP gpuslice_enforcement_tier The mechanism holding each resource on the GPU; always 1.
# TYPE gpuslice_enforcement_tier gauge
gpuslice_enforcement_tier{gpu="0",resource="compute",tier="freezer",uuid="GPU-aaa"} 1
gpuslice_enforcement_tier{gpu="0",resource="memory",tier="driver",uuid="GPU-aaa"} 1
gpuslice_enforcement_tier{gpu="1",resource="compute",tier="freezer",uuid="GPU-bbb"} 1
gpuslice_enforcement_tier{gpu="1",resource="memory",tier="driver",uuid="GPU-bbb"} 1
`

const wantAgent = `
# HELP gpuslice_agent_errors_total Failed reads while sampling, by source.
# TYPE gpuslice_agent_errors_total counter
gpuslice_agent_errors_total{source="checkpoint"} 0
gpuslice_agent_errors_total{source="dra"} 0
gpuslice_agent_errors_total{source="nvml"} 1
gpuslice_agent_errors_total{source="podresources"} 2
gpuslice_agent_errors_total{source="proc"} 0
# HELP gpuslice_agent_gpu_blind 1 when the GPU's readings or process list failed in the last sample: its containers' use series are absent, not zero, and their throttles hold; 0 otherwise.
# TYPE gpuslice_agent_gpu_blind gauge
gpuslice_agent_gpu_blind{gpu="0",uuid="GPU-aaa"} 0
gpuslice_agent_gpu_blind{gpu="1",uuid="GPU-bbb"} 1
gpuslice_agent_gpu_blind{gpu="2",uuid="MIG-111"} 0
# HELP gpuslice_agent_last_sample_timestamp_seconds When the last sample was taken.
# TYPE gpuslice_agent_last_sample_timestamp_seconds gauge
gpuslice_agent_last_sample_timestamp_seconds 1.700000001e+09
# HELP gpuslice_agent_sample_duration_seconds Time one sample of the node took.
# TYPE gpuslice_agent_sample_duration_seconds histogram
gpuslice_agent_sample_duration_seconds_bucket{le="0.001"} 1
gpuslice_agent_sample_duration_seconds_bucket{le="0.0025"} 2
gpuslice_agent_sample_duration_seconds_bucket{le="0.005"} 3
gpuslice_agent_sample_duration_seconds_bucket{le="0.01"} 3
gpuslice_agent_sample_duration_seconds_bucket{le="0.025"} 3
gpuslice_agent_sample_duration_seconds_bucket{le="0.05"} 3
gpuslice_agent_sample_duration_seconds_bucket{le="0.1"} 3
gpuslice_agent_sample_duration_seconds_bucket{le="0.25"} 3
gpuslice_agent_sample_duration_seconds_bucket{le="0.5"} 3
gpuslice_agent_sample_duration_seconds_bucket{le="1"} 3
gpuslice_agent_sample_duration_seconds_bucket{le="2.5"} 3
gpuslice_agent_sample_duration_seconds_bucket{le="+Inf"} 3
gpuslice_agent_sample_duration_seconds_sum 0.006
gpuslice_agent_sample_duration_seconds_count 3
# HELP gpuslice_agent_unattributed_processes GPU processes in the last sample that no container holding slices could be found for.
# TYPE gpuslice_agent_unattributed_processes gauge
gpuslice_agent_unattributed_processes{gpu="0",uuid="GPU-aaa"} 1
gpuslice_agent_unattributed_processes{gpu="1",uuid="GPU-bbb"} 0
gpuslice_agent_unattributed_processes{gpu="2",uuid="MIG-111"} 0
# HELP gpuslice_agent_unauthorized_processes GPU processes in the last sample that run in a pod whose container holds no slice of the GPU.
# TYPE gpuslice_agent_unauthorized_processes gauge
gpuslice_agent_unauthorized_processes{gpu="0",uuid="GPU-aaa"} 1
gpuslice_agent_unauthorized_processes{gpu="1",uuid="GPU-bbb"} 0
gpuslice_agent_unauthorized_processes{gpu="2",uuid="MIG-111"} 0
# HELP gpuslice_build_info The agent's build; always 1.
# TYPE gpuslice_build_info gauge
gpuslice_build_info{goversion="GOVERSION",version="v1.2.3"} 1
`

var info = Info{Version: "v1.2.3", System: nvml.SystemInfo{DriverVersion: "570.124.06", CUDADriverVersion: 12080}, Enforcement: enforcement{},
	MIG: func() []nvml.Device { return migGPUs }, MIGStrategy: "mixed", Healthy: func(uuid, _ string) bool { return uuid != "MIG-222" }}

// migGPUs: GPU 0 and 1 are the snapshot's (1 MIG-capable, mode off), GPU 2
// is in MIG mode with two instances, GPU 3's mode is pending.
var migGPUs = []nvml.Device{
	{UUID: "GPU-aaa", Index: 0},
	{UUID: "GPU-bbb", Index: 1, MIGCapable: true},
	{UUID: "GPU-ccc", Index: 2, MIGCapable: true, MemoryBytes: 42949672960, MIG: nvml.MIG{Current: true, Pending: true, Instances: []nvml.MIGInstance{
		{UUID: "MIG-111", Profile: "3g.40gb", GISlices: 3, CISlices: 3, MemoryBytes: 42949672960 / 2}, {UUID: "MIG-222", Profile: "1g.10gb+me"},
	}}},
	{UUID: "GPU-ddd", Index: 3, MIGCapable: true, MIG: nvml.MIG{Pending: true}},
}

const wantMIG = `# HELP gpuslice_device_mig_mode 1 when the MIG-capable GPU's MIG mode is enabled (state current: in force; pending: from its next reset), 0 when not. A GPU with either is not cut into slices: its MIG instances are offered under their own resources (gpuslice_mig_instance_info), isolated by the hardware; the containers on them are measured per instance (memory; compute is unmeasured on MIG) and a process on an instance its container does not hold is unauthorized (docs/mig.md).
# TYPE gpuslice_device_mig_mode gauge
gpuslice_device_mig_mode{gpu="1",state="current",uuid="GPU-bbb"} 0
gpuslice_device_mig_mode{gpu="1",state="pending",uuid="GPU-bbb"} 0
gpuslice_device_mig_mode{gpu="2",state="current",uuid="GPU-ccc"} 1
gpuslice_device_mig_mode{gpu="2",state="pending",uuid="GPU-ccc"} 1
gpuslice_device_mig_mode{gpu="3",state="current",uuid="GPU-ddd"} 0
gpuslice_device_mig_mode{gpu="3",state="pending",uuid="GPU-ddd"} 1
# HELP gpuslice_mig_instance_healthy 1 if the MIG instance is offered Healthy, 0 if not: its GPU is unhealthy, or the driver put an XID on the instance itself.
# TYPE gpuslice_mig_instance_healthy gauge
gpuslice_mig_instance_healthy{gpu="2",mig_uuid="MIG-111",uuid="GPU-ccc"} 1
gpuslice_mig_instance_healthy{gpu="2",mig_uuid="MIG-222",uuid="GPU-ccc"} 0
# HELP gpuslice_mig_instance_info A MIG instance in force on the GPU, with its profile and the resource it is offered under; always 1.
# TYPE gpuslice_mig_instance_info gauge
gpuslice_mig_instance_info{gpu="2",mig_profile="1g.10gb+me",mig_uuid="MIG-222",resource="nvidia.com/mig-1g.10gb.me",uuid="GPU-ccc"} 1
gpuslice_mig_instance_info{gpu="2",mig_profile="3g.40gb",mig_uuid="MIG-111",resource="nvidia.com/mig-3g.40gb",uuid="GPU-ccc"} 1
# HELP gpuslice_mig_instance_memory_used_bytes Framebuffer memory in use on the MIG instance, as the driver reports it for the instance.
# TYPE gpuslice_mig_instance_memory_used_bytes gauge
gpuslice_mig_instance_memory_used_bytes{gpu="2",mig_uuid="MIG-111",uuid="GPU-ccc"} 4.294967296e+09
`

func names(text string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, "# TYPE "); ok {
			out = append(out, strings.Fields(rest)[0])
		}
	}
	return out
}

func TestExposition(t *testing.T) {
	t.Parallel()
	reg := NewExposition(fixed{snapshot()}, info)
	for name, want := range map[string]string{
		"devices and slices":         wantDevices,
		"containers and enforcement": wantContainers,
		"agent":                      strings.ReplaceAll(wantAgent, "GOVERSION", runtime.Version()),
		"mig":                        wantMIG,
	} {
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names(want)...); err != nil {
			t.Errorf("%s:\n%v", name, err)
		}
	}
}

func TestLint(t *testing.T) {
	t.Parallel()
	problems, err := testutil.GatherAndLint(NewExposition(fixed{snapshot()}, info))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestBlindContainerExportsNoUse: a container on a GPU the agent could not
// read has no use series at all (a 0 would read as an idle pod), while the
// slices and limits it holds, known from the kubelet, stay.
func TestBlindContainerExportsNoUse(t *testing.T) {
	t.Parallel()
	snap := snapshot()
	snap.Containers[0].Blind = true
	snap.Containers[1].LastActive = time.Unix(1700000000, 0)
	reg := NewExposition(fixed{snap}, info)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	pods := func(name string) map[string]bool {
		out := map[string]bool{}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "pod" {
						out[l.GetValue()] = true
					}
				}
			}
		}
		return out
	}
	for _, name := range []string{"gpuslice_container_memory_used_bytes", "gpuslice_container_sm_utilization_ratio",
		"gpuslice_container_gpu_busy_seconds_total", "gpuslice_container_last_active_timestamp_seconds", "gpuslice_container_sm_utilization_of_limit_ratio"} {
		if got := pods(name); got["a"] || !got["b"] {
			t.Errorf("%s: series for pods %v; want b's and not the blind a's", name, got)
		}
	}
	for _, name := range []string{"gpuslice_container_slices", "gpuslice_container_memory_limit_bytes", "gpuslice_container_compute_limit_ratio"} {
		if got := pods(name); !got["a"] {
			t.Errorf("%s: the blind container's series is missing", name)
		}
	}
}

func TestEmptySnapshot(t *testing.T) {
	t.Parallel()
	// Before the first sample: the agent's own metrics, nothing made up.
	reg := NewExposition(fixed{&node.Snapshot{Errors: map[string]uint64{}}}, info)
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatal(err)
	}
	// build_info, the histogram, five error counters, enforcement
	// failures, four driver limit operation counters, whether each of the
	// two tiers can engage on the node, and the two host files read
	// as a stale copy (none); and what enumeration found of MIG, known
	// before any sample: 3 MIG-capable GPUs' two modes, and 2 instances' info and health.
	if n != 16+6+2+2 {
		t.Errorf("%d series before the first sample, want 26", n)
	}
}

// TestClaimInfo: a container holding a GPU through DRA claims has one
// claim_info series per claim; one holding nvidia.com/vgpu slices none.
func TestClaimInfo(t *testing.T) {
	t.Parallel()
	snap := &node.Snapshot{Errors: map[string]uint64{}, Containers: []node.Container{
		{Namespace: "ml", Pod: "train", Container: "main", UUID: "GPU-aaa", Index: 0, Slices: 3, Claims: []string{"ml/a", "ml/b"}},
		{Namespace: "ml", Pod: "infer", Container: "main", UUID: "GPU-aaa", Index: 0, Slices: 1},
	}}
	mfs, err := NewExposition(fixed{snap}, info).Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range mfs {
		if mf.GetName() != "gpuslice_container_claim_info" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			got = append(got, l["pod"]+":"+l["claim_namespace"]+"/"+l["claim"]+"@"+l["uuid"])
		}
	}
	if strings.Join(got, " ") != "train:ml/a@GPU-aaa train:ml/b@GPU-aaa" {
		t.Errorf("claim_info series %v", got)
	}
}

// TestContractMetricsExported: every metric name kubectl gpuslice and the
// quota controller read (contract.ReadMetrics) is one the agent exports,
// so a rename here cannot silently empty their tables and budgets.
func TestContractMetricsExported(t *testing.T) {
	t.Parallel()
	out := string(NewExposition(fixed{snapshot()}, info).Append(nil))
	for _, name := range contract.ReadMetrics {
		if !strings.Contains(out, "# TYPE "+name+" ") {
			t.Errorf("the agent does not export %s, which other programs read", name)
		}
	}
	// The chart's dropDetail names these: a rename would silently stop
	// dropping them.
	for _, name := range contract.DetailMetrics {
		if !strings.Contains(out, "# TYPE "+name+" ") {
			t.Errorf("the agent does not export %s, which the chart's dropDetail drops", name)
		}
	}
}
