package gpudev

import (
	"context"
	"errors"
	"fmt"
)

// Device is what the agent knows about one physical GPU.
type Device struct {
	// UUID is NVML's stable identifier, e.g. "GPU-8c7d2f3a-...".
	UUID string
	// Index is NVML's enumeration index on this node.
	Index int
	// Minor is the minor number of the GPU's device node, /dev/nvidia<Minor>.
	Minor int
	// Model is NVML's product name, e.g. "NVIDIA A100-SXM4-40GB".
	Model string
	// MemoryBytes is the total framebuffer memory.
	MemoryBytes uint64
	// ComputeMajor and ComputeMinor are the CUDA compute capability.
	ComputeMajor int
	ComputeMinor int
	// PCIBusID is the PCI address, e.g. "00000000:07:00.0".
	PCIBusID string
	// NUMANode is the NUMA node the GPU is attached to, or -1 when unknown.
	NUMANode int
	// PCIeRoot is the PCIe root complex the GPU sits under, as
	// "pci<domain>:<bus>", or "" when unknown.
	PCIeRoot string
	// MIGCapable is true when the GPU supports MIG (whether or not MIG
	// is enabled).
	MIGCapable bool
	// MIG is its MIG mode and instances; zero on a GPU without MIG.
	MIG MIG
}

// SystemInfo describes the driver stack.
type SystemInfo struct {
	// DriverVersion is the kernel driver version, e.g. "570.124.06".
	DriverVersion string
	// CUDADriverVersion is the CUDA version the driver supports, encoded as
	// NVML does: 1000*major + 10*minor, e.g. 12080 for 12.8.
	CUDADriverVersion int
}

// CUDAVersion returns the CUDA driver version as "major.minor".
func (s SystemInfo) CUDAVersion() string {
	return fmt.Sprintf("%d.%d", s.CUDADriverVersion/1000, s.CUDADriverVersion%1000/10)
}

// Health is a GPU's health as reported by a backend. Backends report every
// GPU's state once when watching starts, then each change, and every
// critical XID (Reason ReasonXID), even on a GPU already unhealthy.
type Health struct {
	// UUID names the GPU.
	UUID string
	// Healthy is false while the GPU should not be allocated from.
	Healthy bool
	// Reason says why the GPU is unhealthy ("xid", "lost") or why it
	// recovered ("recovered"); empty for the initial healthy report.
	Reason string
	// XID is the XID that made the GPU unhealthy, when Reason is "xid".
	XID uint64
	// Parent is set when UUID names a MIG instance: the GPU it is on. An
	// XID the driver attributes to one instance makes only that instance
	// unhealthy; its GPU's own reports say the GPU's health, which all of
	// its instances share.
	Parent string
}

// Reasons carried in Health.Reason.
const (
	ReasonXID       = "xid"
	ReasonLost      = "lost"
	ReasonRecovered = "recovered"
)

// Sample is one GPU's state at one moment.
type Sample struct {
	// UUID names the GPU.
	UUID string
	// Utilization is the share of time the GPU was busy over the driver's
	// last sampling period, 0..1.
	Utilization float64
	// MemoryUsedBytes is the framebuffer memory in use.
	MemoryUsedBytes uint64
	// TemperatureCelsius is the GPU core temperature.
	TemperatureCelsius float64
	// PowerWatts is the current board power draw.
	PowerWatts float64
	// EnergyJoules is the energy used since the driver was loaded.
	EnergyJoules float64
	// SMClockHertz is the current SM clock.
	SMClockHertz float64
	// ProcessUtilizationUnsupported is true when the driver measures no
	// per-process utilization on the device: NVML answers NOT_SUPPORTED
	// on a MIG instance. Every process's SMUtilization is then unknown,
	// not zero. Temperature, power, energy and clocks are the physical
	// GPU's and are not read for a MIG instance (zero).
	ProcessUtilizationUnsupported bool
	// UtilizationUnsupported is true when the driver measures no
	// utilization of the device itself either: a MIG instance on a GPU
	// without GPM (before Hopper). Utilization is then unknown, not zero;
	// with GPM it is the instance's SM utilization.
	UtilizationUnsupported bool
}

// Process is one process using a GPU.
type Process struct {
	// PID is the process ID in the host's PID namespace.
	PID int
	// MemoryBytes is the GPU memory the process holds.
	MemoryBytes uint64
	// SMUtilization is the share of the GPU's SM time the process used since
	// the previous Processes call for the GPU, 0..1; 0 when the driver has
	// no sample for it.
	SMUtilization float64
}

// Backend is the agent's view of the GPUs on its node.
type Backend interface {
	// Devices returns the GPUs that could be enumerated, ordered by index.
	// When some GPUs fail to enumerate it returns the others together with
	// an error describing the failures; callers decide whether that is fatal.
	Devices() ([]Device, error)
	// System returns driver and CUDA versions.
	System() (SystemInfo, error)
	// WatchHealth calls report with every GPU's current health, then with
	// each change, until ctx is done. It returns nil when ctx ends and an
	// error only when health can no longer be watched at all.
	WatchHealth(ctx context.Context, report func(Health)) error
	// Sample reads one GPU's current state.
	Sample(uuid string) (Sample, error)
	// Processes returns the processes using one GPU, with their memory and
	// their SM utilization since the previous call for that GPU.
	Processes(uuid string) ([]Process, error)
	// MemoryLimiter sets the driver's per-cgroup memory limits, where the
	// driver has them.
	MemoryLimiter
	// Close releases the backend.
	Close() error
}

// ErrLibraryNotFound reports that the NVML library could not be loaded.
var ErrLibraryNotFound = errors.New("NVML library libnvidia-ml.so.1 not found")

// ErrCall wraps an error returned by one backend call, so callers can count
// failures by call.
type ErrCall struct {
	// Call is the backend or NVML call that failed, e.g. "nvmlDeviceGetUUID".
	Call string
	// Err is the underlying error.
	Err error
}

// Error implements error.
func (e *ErrCall) Error() string { return e.Call + ": " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *ErrCall) Unwrap() error { return e.Err }

// NoMemoryLimit is the hard limit that means "no limit"
// (NVML_DEVICE_MEMORY_LIMIT_MAX). Setting a soft limit of 0 and this hard
// limit clears a cgroup's limits.
const NoMemoryLimit = ^uint64(0)

// MemoryLimits are the driver's GPU memory limits for the processes of one
// cgroup on one GPU (nvmlDeviceSetMemoryLimits_v1, driver r615 and later).
type MemoryLimits struct {
	// SoftBytes is guaranteed to the cgroup; above it, allocations may
	// fail under memory pressure. 0: nothing guaranteed.
	SoftBytes uint64
	// HardBytes is the most the cgroup can allocate; an allocation past it
	// fails with out-of-memory. NoMemoryLimit: no limit.
	HardBytes uint64
	// UsedBytes is what the cgroup holds now (read back only).
	UsedBytes uint64
}

// MemoryLimiter is the part of a backend that sets the driver's
// per-cgroup GPU memory limits. Cgroups are named by the full path of
// their directory in the cgroup v2 hierarchy.
type MemoryLimiter interface {
	// MemoryLimitsSupported returns nil when the driver enforces
	// per-cgroup memory limits for cgroups under cgroupDir, or an error
	// wrapping ErrNotSupported that says why not.
	MemoryLimitsSupported(cgroupDir string) error
	// SetMemoryLimits sets one cgroup's limits on one GPU.
	SetMemoryLimits(uuid, cgroupDir string, softBytes, hardBytes uint64) error
	// MemoryLimits reads one cgroup's limits on one GPU and what it uses.
	MemoryLimits(uuid, cgroupDir string) (MemoryLimits, error)
}

// ErrNotSupported reports a driver feature this GPU or driver lacks.
var ErrNotSupported = errors.New("not supported by this driver")
