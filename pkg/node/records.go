package node

import "github.com/gpuslice/gpuslice/pkg/contract"

// The kubelet's and the runtime's records, as plain data: what the edges
// (pkg/podresources, pkg/host, pkg/kubeletstate) read and the join
// and the holdings read.

// Assignment is one container holding devices of a resource, as
// pod-resources lists it; with the DRA driver named, any container, with
// the driver's claims it holds.
type Assignment struct {
	// Namespace, Pod and Container name the container.
	Namespace string
	Pod       string
	Container string
	// DeviceIDs are the device IDs it holds, sorted.
	DeviceIDs []string
	// Instances are the MIG instances (their "MIG-..." UUIDs, sorted) it
	// holds whole through a device plugin, whichever resource they were
	// offered under (nvidia.com/mig-<profile>, nvidia.com/gpu under the
	// single strategy, or another plugin's).
	Instances []string
	// Claims are the UIDs of the DRA driver's claims it holds, sorted: the
	// kubelet lists each claim's CDI devices, whose names carry the claim
	// UID (contract.ClaimUIDOfCDIDevice).
	Claims []string
}

// CheckpointEntry is one container's devices of one resource.
type CheckpointEntry struct {
	PodUID    string
	Container string
	Resource  string
	DeviceIDs []string // sorted
	// Grants is what Allocate gave the container of each GPU, read back
	// from the response the kubelet recorded (its environment); nil when
	// the entry has no response or it is not one of gpuslice's. A
	// container keeps what it was given even after the node's slicing
	// changes under it.
	Grants []contract.Grant
}

// RuntimeContainer is what the container runtime recorded about one
// container when it created it: the OCI bundle's annotations, written on
// the host before the container's first process ran.
type RuntimeContainer struct {
	// Name is the container's name in its pod spec; empty for a sandbox.
	Name string
	// Sandbox is true for the pod's sandbox (pause) container.
	Sandbox bool
	// PodUID, PodNamespace and PodName identify its pod, where the runtime
	// records them.
	PodUID, PodNamespace, PodName string
	// CgroupsPath is the cgroup the runtime created the container in, as
	// the bundle's linux.cgroupsPath says (a path, or systemd's
	// "slice:prefix:name"); empty when the bundle does not say.
	CgroupsPath string
}

// ContainerNames tells a container's name in its pod from its runtime ID.
type ContainerNames interface {
	// Lookup returns what the runtime recorded about a container, and
	// false when nothing is known of it.
	Lookup(containerID string) (RuntimeContainer, bool)
}

// Records are runtime records by container ID, as plain data: what the
// sampler looked up for one sample, so that Build reads no bundle itself.
type Records map[string]RuntimeContainer

// Lookup implements ContainerNames.
func (r Records) Lookup(containerID string) (RuntimeContainer, bool) {
	c, ok := r[containerID]
	return c, ok
}
