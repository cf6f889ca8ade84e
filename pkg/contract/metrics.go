package contract

// The agent's metric names that other programs read: kubectl gpuslice
// (pkg/gputop) and the quota controller's queries (pkg/quota). The agent's
// exposition must export each (pkg/exporter's TestContractMetricsExported),
// so a rename there cannot silently empty a table or a budget.
const (
	MetricDeviceInfo                 = "gpuslice_device_info"
	MetricDeviceMemoryTotalBytes     = "gpuslice_device_memory_total_bytes"
	MetricDeviceMemoryUsedBytes      = "gpuslice_device_memory_used_bytes"
	MetricDeviceUtilizationRatio     = "gpuslice_device_utilization_ratio"
	MetricDeviceHealthy              = "gpuslice_device_healthy"
	MetricSlicesCapacity             = "gpuslice_slices_capacity"
	MetricSlicesAllocated            = "gpuslice_slices_allocated"
	MetricContainerSlices            = "gpuslice_container_slices"
	MetricContainerMemoryUsedBytes   = "gpuslice_container_memory_used_bytes"
	MetricContainerMemoryLimitBytes  = "gpuslice_container_memory_limit_bytes"
	MetricContainerSMUtilization     = "gpuslice_container_sm_utilization_ratio"
	MetricContainerComputeLimit      = "gpuslice_container_compute_limit_ratio"
	MetricContainerLastActive        = "gpuslice_container_last_active_timestamp_seconds"
	MetricContainerGPUBusySeconds    = "gpuslice_container_gpu_busy_seconds_total"
	MetricContainerUseUnknown        = "gpuslice_container_use_unknown"
	MetricAgentGPUBlind              = "gpuslice_agent_gpu_blind"
	MetricDeviceMIGMode              = "gpuslice_device_mig_mode"
	MetricMIGInstanceInfo            = "gpuslice_mig_instance_info"
	MetricMIGInstanceHealthy         = "gpuslice_mig_instance_healthy"
	MetricMIGInstanceMemoryUsed      = "gpuslice_mig_instance_memory_used_bytes"
	MetricContainerComputeUnmeasured = "gpuslice_container_compute_unmeasured"
	MetricAgentLastSample            = "gpuslice_agent_last_sample_timestamp_seconds"
)

// ReadMetrics are the agent's metrics other programs read.
var ReadMetrics = []string{
	MetricDeviceInfo, MetricDeviceMemoryTotalBytes, MetricDeviceMemoryUsedBytes, MetricDeviceUtilizationRatio,
	MetricDeviceHealthy, MetricSlicesCapacity, MetricSlicesAllocated, MetricContainerSlices,
	MetricContainerMemoryUsedBytes, MetricContainerMemoryLimitBytes, MetricContainerSMUtilization,
	MetricContainerComputeLimit, MetricContainerLastActive, MetricContainerGPUBusySeconds,
	MetricContainerUseUnknown, MetricAgentGPUBlind,
	MetricDeviceMIGMode, MetricMIGInstanceInfo, MetricMIGInstanceHealthy,
	MetricMIGInstanceMemoryUsed, MetricContainerComputeUnmeasured, MetricAgentLastSample,
}

// DetailMetrics are the agent's per-container families that no reader
// needs (not kubectl gpuslice, not the quota controller, not the shipped
// alerts, dashboard or recording rules): how enforcement went, container
// by container. The chart's metrics.serviceMonitor.dropDetail drops them
// at the scrape, for large clusters; Events and the per-node counters
// still say what enforcement did.
var DetailMetrics = []string{
	"gpuslice_container_sm_utilization_of_limit_ratio",
	"gpuslice_enforcement_compute_duty_ratio",
	"gpuslice_enforcement_throttled_seconds_total",
	"gpuslice_enforcement_kills_total",
	"gpuslice_enforcement_cgroup_kills_total",
	"gpuslice_enforcement_memory_limit_events_total",
	"gpuslice_enforcement_driver_memory_limit_bytes",
}

// LabelGPUFraction is the label the agent puts on every per-container
// series of a container on a MIG instance: the instance's share of its
// physical GPU (gpudev.InForce.GPUFraction), such as "0.125" for a
// 1g.10gb on an H100. GPU-hour budgets weight the container's use and
// share by it; a series without it stands for a whole GPU's (weight 1).
const LabelGPUFraction = "gpu_fraction"
