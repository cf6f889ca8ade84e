package node

import "path"

// Cgroup is what a process's cgroups say about its container: the pod
// UID at the kubelet's pod level and the container ID at the runtime's
// level (pkg/host reads it from /proc/<pid>/cgroup).
type Cgroup struct {
	// PodUID is the pod's UID in its canonical dashed form, from the
	// kubelet's pod level of the path; empty when the path carries no pod
	// (e.g. a kubelet run with cgroupsPerQOS=false).
	PodUID string
	// ContainerID is the runtime's 64-hex container ID; empty for a
	// process in its pod's own cgroup rather than a container's.
	ContainerID string
	// Runtime is "containerd", "cri-o", "docker" (attribution's Runtime constants), or empty
	// when the naming does not say (cgroupfs paths are bare IDs).
	Runtime string
	// QoS is the pod's QoS class from the path; empty when unknown.
	QoS string
	// Paths maps each cgroup v1 controller (e.g. "memory", "freezer") to the
	// container's own cgroup path in that hierarchy, and "" to its cgroup v2
	// path: the level the runtime created (or the pod's level for a
	// pod-level process), never a subtree below it, as a host path. Only
	// hierarchies where the process is in the container, and whose path
	// could be resolved, are listed.
	Paths map[string]string
	// Unresolved, when set, says why the container's cgroup could not be
	// found in some hierarchy: its line was relative to a cgroup namespace
	// whose root is unknown (ErrUnresolved). The container is named; its
	// cgroup is not reachable there.
	Unresolved string
	// Outside is true when the path lies outside the kubelet's tree: it
	// has no kubepods element, or reaches it through a user's session
	// (user.slice, user@<uid>.service), where systemd delegates cgroups to
	// unprivileged users. A container ID there is only a directory's name
	// anyone could give; it names a pod's container only where the
	// runtime's record of that container says it lives there.
	Outside bool
}

// Pod is the cgroup of the container's pod: the container itself for a
// pod-level process, else the parent of each of its paths (the runtime's
// level lies right under the pod's).
func (c Cgroup) Pod() Cgroup {
	if c.ContainerID == "" {
		return c
	}
	p := Cgroup{PodUID: c.PodUID, QoS: c.QoS, Unresolved: c.Unresolved, Outside: c.Outside, Paths: make(map[string]string, len(c.Paths))}
	for k, v := range c.Paths {
		p.Paths[k] = path.Dir(v)
	}
	return p
}

// PodLevel reports a process in its pod's cgroup, outside every container.
func (c Cgroup) PodLevel() bool { return c.PodUID != "" && c.ContainerID == "" }

// Key names the cgroup the agent holds for this container: the container
// ID, or "pod-<uid>" for the pod's own cgroup.
func (c Cgroup) Key() string {
	if c.ContainerID != "" {
		return c.ContainerID
	}
	if c.PodUID != "" {
		return "pod-" + c.PodUID
	}
	return ""
}

// Describe names the container, or the pod, for messages.
func (c Cgroup) Describe() string {
	switch {
	case c.ContainerID != "" && c.PodUID != "":
		return "container " + c.ContainerID + " of pod " + c.PodUID
	case c.ContainerID != "":
		return "container " + c.ContainerID
	}
	return "pod " + c.PodUID
}
