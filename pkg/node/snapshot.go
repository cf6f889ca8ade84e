package node

import (
	"time"

	"github.com/gpuslice/gpuslice/pkg/gpudev"
)

// Error sources counted in Snapshot.Errors.
const (
	SourceNVML         = "nvml"
	SourcePodResources = "podresources"
	SourceCheckpoint   = "checkpoint"
	SourceProc         = "proc"
	// SourceDRA is the kubelet's DRA checkpoint and the DRA driver's
	// record of prepared claims.
	SourceDRA = "dra"
)

// DurationBuckets are the upper bounds, in seconds, of the sample duration
// histogram.
var DurationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// Histogram is a cumulative histogram of sample durations.
type Histogram struct {
	// Counts[i] is the number of samples no longer than DurationBuckets[i].
	Counts []uint64
	Count  uint64
	Sum    float64
}

// Observe adds one duration.
func (h *Histogram) Observe(d time.Duration) {
	if h.Counts == nil {
		h.Counts = make([]uint64, len(DurationBuckets))
	}
	secs := d.Seconds()
	h.Count++
	h.Sum += secs
	for i, b := range DurationBuckets {
		if secs <= b {
			h.Counts[i]++
		}
	}
}

// Clone returns a copy that does not share the counts.
func (h Histogram) Clone() Histogram {
	h.Counts = append([]uint64(nil), h.Counts...)
	return h
}

// Device is one GPU in a snapshot.
type Device struct {
	gpudev.Device
	// Instance is set when the device is a MIG instance in force, read as
	// a device of its own (UUID "MIG-...", Index its GPU's): containers
	// hold it whole, and its processes are its own. Nil for a GPU.
	Instance *gpudev.InForce
	// Sample is the GPU's state; valid only when SampleOK.
	Sample   gpudev.Sample
	SampleOK bool
	// ProcessesOK is false when the GPU's processes could not be listed:
	// then no container's use of the GPU is known.
	ProcessesOK bool
	// Health is the device plugin's view.
	Health gpudev.Health
	// XIDs counts critical XIDs by XID since the agent started.
	XIDs map[uint64]uint64
	// Slices is how many slices the GPU is cut into; Allocated, how many
	// of them containers hold.
	Slices    int
	Allocated int
}

// Blind reports whether the device's use by containers is unknown in this
// sample: its readings or its process list failed.
func (d Device) Blind() bool { return !d.SampleOK || !d.ProcessesOK }

// PerProcessUnmeasured reports whether the driver measures no
// per-process compute use on the device (a MIG instance), so its
// containers' SM use is not the sum of their processes': it is the
// device's own utilization where one container alone holds the device and
// the driver measures it (GPM), and unknown otherwise.
func (d Device) PerProcessUnmeasured() bool {
	return d.SampleOK && d.Sample.ProcessUtilizationUnsupported
}

// Container is one container's use of one GPU in a snapshot.
type Container struct {
	Namespace string
	Pod       string
	Container string
	// PodUID is the pod's UID when known.
	PodUID string
	// UUID is the GPU's UUID; Index its index.
	UUID  string
	Index int
	// Claims are the DRA claims ("namespace/name", sorted) through which
	// the container holds the GPU; none for device-plugin slices.
	Claims []string
	// Slices held on this GPU and the limits they carry.
	Slices            int
	MemoryLimitBytes  uint64
	ComputeLimitRatio float64
	// MemoryUsedBytes and SMUtilization are summed over the container's
	// processes on this GPU.
	MemoryUsedBytes uint64
	SMUtilization   float64
	// BusySeconds is the GPU time the container has used since the agent
	// started: SM utilization integrated over time.
	BusySeconds float64
	// LastActive is the last sample at which the container used the GPU;
	// zero if never.
	LastActive time.Time
	// Processes is how many of its processes use the GPU.
	Processes int
	// Procs are those processes, with their memory and SM utilization.
	Procs []gpudev.Process
	// Cgroup is the cgroup that holds the container's GPU processes, from
	// those processes: the container's own, or its pod's when one of them
	// runs in the pod's cgroup; zero when none of them was seen.
	Cgroup Cgroup
	// Blind is true when the GPU's processes could not be listed in this
	// sample: the use fields above are unknown, not zero, and Cgroup is
	// the last one seen.
	Blind bool
	// ComputeUnmeasured is true when the container's compute use on the
	// device cannot be measured: a MIG instance on a GPU without GPM, or
	// one several containers hold (the driver measures no process there,
	// so the instance's use cannot be split). SMUtilization, BusySeconds
	// and LastActive are then unknown, not zero; memory is measured.
	ComputeUnmeasured bool
	// Unknown, when set, says why the container's use of the GPU cannot
	// be told: a process of its pod on the GPU could not be placed in one
	// of the pod's containers. Its use fields are unknown, not zero (they
	// are left out, as on a blind GPU), and its pod is held as one, at the
	// pod's level: Cgroup is the pod's, and the snapshot's Groups hold the
	// pod's total.
	Unknown string
}

// Enforced are what enforcement holds to limits: every container whose
// use is known (or unknown only for a blind GPU), and the pods held at
// their pod's level (Groups) in place of their containers.
func (s *Snapshot) Enforced() []Container {
	out := make([]Container, 0, len(s.Containers)+len(s.Groups))
	for _, c := range s.Containers {
		if c.Unknown == "" {
			out = append(out, c)
		}
	}
	return append(out, s.Groups...)
}

// Snapshot is the node's state at one sample. It is never modified once
// published.
type Snapshot struct {
	Time         time.Time
	Duration     time.Duration
	Devices      []Device
	Containers   []Container
	Unattributed []Unattributed
	// Unauthorized are processes in pods using GPUs their containers hold
	// no slices of.
	Unauthorized []Unauthorized
	// Groups are the pods held at the pod's level on a GPU, one entry per
	// pod and GPU: Container is empty, the limits are the total its
	// containers hold of the GPU, the use that of all of the pod's
	// processes on it, Cgroup the pod's cgroup, and Unknown why.
	Groups []Container
	// Stale says which host files this sample read as their last copy
	// read whole, a later read having failed.
	Stale Stale
	// Errors counts failures by source since the agent started.
	Errors map[string]uint64
	// Durations is how long samples took, up to the previous one.
	Durations Histogram
}
