package nvml

import "github.com/gpuslice/gpuslice/pkg/gpudev"

// The backend's types live in pkg/gpudev, which does no I/O; these names
// keep them readable as nvml's where NVML is what is meant.
type (
	// Device is gpudev.Device.
	Device = gpudev.Device
	// SystemInfo is gpudev.SystemInfo.
	SystemInfo = gpudev.SystemInfo
	// Health is gpudev.Health.
	Health = gpudev.Health
	// Sample is gpudev.Sample.
	Sample = gpudev.Sample
	// Process is gpudev.Process.
	Process = gpudev.Process
	// Backend is gpudev.Backend.
	Backend = gpudev.Backend
	// ErrCall is gpudev.ErrCall.
	ErrCall = gpudev.ErrCall
	// MemoryLimits is gpudev.MemoryLimits.
	MemoryLimits = gpudev.MemoryLimits
	// MemoryLimiter is gpudev.MemoryLimiter.
	MemoryLimiter = gpudev.MemoryLimiter
	// MIG is gpudev.MIG.
	MIG = gpudev.MIG
	// MIGInstance is gpudev.MIGInstance.
	MIGInstance = gpudev.MIGInstance
)

// MIGProfileName is gpudev.MIGProfileName.
func MIGProfileName(giSlices, ciSlices int, memoryBytes, gpuMemoryBytes uint64, mediaExtensions bool) string {
	return gpudev.MIGProfileName(giSlices, ciSlices, memoryBytes, gpuMemoryBytes, mediaExtensions)
}

// Reasons carried in Health.Reason, and the hard limit meaning none.
const (
	ReasonXID       = gpudev.ReasonXID
	ReasonLost      = gpudev.ReasonLost
	ReasonRecovered = gpudev.ReasonRecovered
	NoMemoryLimit   = gpudev.NoMemoryLimit
)

// Errors a backend returns.
var (
	// ErrLibraryNotFound is gpudev.ErrLibraryNotFound.
	ErrLibraryNotFound = gpudev.ErrLibraryNotFound
	// ErrNotSupported is gpudev.ErrNotSupported.
	ErrNotSupported = gpudev.ErrNotSupported
)

// Whole is gpudev.Whole.
func Whole(devs []Device) []Device { return gpudev.Whole(devs) }

// MIGModeChange is gpudev.MIGModeChange.
func MIGModeChange(before, now []Device) string { return gpudev.MIGModeChange(before, now) }

// MIGInstancesChanged is gpudev.MIGInstancesChanged.
func MIGInstancesChanged(before, now []Device) bool { return gpudev.MIGInstancesChanged(before, now) }

// UUIDs is gpudev.UUIDs.
func UUIDs(devs []Device) []string { return gpudev.UUIDs(devs) }

// IsMIGUUID is gpudev.IsMIGUUID.
func IsMIGUUID(uuid string) bool { return gpudev.IsMIGUUID(uuid) }

// InForce is gpudev.InForce.
type InForce = gpudev.InForce

// InstancesInForce is gpudev.InstancesInForce.
func InstancesInForce(devs []Device) []InForce { return gpudev.InstancesInForce(devs) }
