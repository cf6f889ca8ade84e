// Package contract holds, once, the names other programs rely on: the
// extended resource gpuslice offers, the environment a container holding
// slices gets from Allocate, and the host paths the agent reads by default.
// Anything that writes or reads one of these takes it from here, with
// the parsers that check them. It does no I/O: callers read and write the
// files and sockets these name.
package contract

// ResourceName is the extended resource offered by default (--resource-name).
const ResourceName = "nvidia.com/vgpu"

// The environment Allocate gives a container holding slices. Each
// per-GPU value is a comma-separated list in the order of
// NVIDIA_VISIBLE_DEVICES.
const (
	// EnvVisibleDevices lists the container's GPUs by UUID, for the NVIDIA
	// container runtime.
	EnvVisibleDevices = "NVIDIA_VISIBLE_DEVICES"
	// EnvSliceIDs lists the slices, "<GPU-UUID>::<index>".
	EnvSliceIDs = "GPUSLICE_SLICE_IDS"
	// EnvSlices is the number of slices held on each GPU.
	EnvSlices = "GPUSLICE_SLICES"
	// EnvMemoryLimit is the GPU memory the slices allow on each GPU, bytes.
	EnvMemoryLimit = "GPUSLICE_MEMORY_LIMIT_BYTES"
	// EnvComputeLimit is the share of each GPU's compute, 0..1.
	EnvComputeLimit = "GPUSLICE_COMPUTE_LIMIT_RATIO"
)

// Environment the agent and the kubectl plugin read.
const (
	// EnvNodeName names the agent's node (the chart sets it from the
	// downward API); --node-name overrides it.
	EnvNodeName = "NODE_NAME"
	// EnvPrometheusURL is the Prometheus the kubectl plugin queries;
	// --prometheus-url overrides it.
	EnvPrometheusURL = "GPUSLICE_PROMETHEUS_URL"
)

// Default host paths.
const (
	// KubeletDir is the kubelet's root directory, holding the plugin
	// registration and DRA plugin sockets.
	KubeletDir = "/var/lib/kubelet"
	// DevicePluginDir is where the kubelet's device plugin sockets live.
	DevicePluginDir = "/var/lib/kubelet/device-plugins/"
	// PodResourcesSocket is the kubelet's pod-resources API.
	PodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
	// CgroupRoot is where the cgroup filesystems are mounted.
	CgroupRoot = "/sys/fs/cgroup"
	// ProcRoot is the host's /proc.
	ProcRoot = "/proc"
	// SysfsRoot is the host's /sys.
	SysfsRoot = "/sys"
	// MIGMinorsFile is where the NVIDIA driver lists the minor numbers of
	// the MIG capability devices (/dev/nvidia-caps/nvidia-cap<minor>).
	MIGMinorsFile = "/proc/driver/nvidia-caps/mig-minors"
	// EnforcementState records throttled containers across agent restarts.
	EnforcementState = "/var/lib/gpuslice/enforcement.json"
	// MPSPipeDirectory is where the MPS control daemon's pipes live.
	MPSPipeDirectory = "/run/nvidia/mps"
)

// RuntimeStateDirs are containerd's and CRI-O's state directories for
// Kubernetes containers, where their bundles name each container.
func RuntimeStateDirs() []string {
	return []string{
		"/run/containerd/io.containerd.runtime.v2.task/k8s.io",
		"/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io",
		"/run/containers/storage/overlay-containers",
	}
}

// Grant is what Allocate gave a container of one GPU, as its environment
// says.
type Grant struct {
	// UUID names the GPU.
	UUID string
	// Slices is how many of its slices the container holds.
	Slices int
	// MemoryBytes is the GPU memory the container may use.
	MemoryBytes uint64
	// ComputeRatio is the container's share of the GPU's compute, 0..1.
	ComputeRatio float64
}
