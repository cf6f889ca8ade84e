package attribution

import (
	"fmt"

	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// GPUProcess is one process seen on a GPU, with what its cgroups say.
type GPUProcess struct {
	// PID is the host PID.
	PID int
	// GPU is the UUID of the GPU the process uses.
	GPU string
	// Container is what the process's cgroups say; zero for a host
	// process.
	Container Container
}

// How a process was attributed.
const (
	// ByContainer: the runtime's record of the container its cgroup names
	// gave the container's name, and that container holds slices of the
	// process's GPU.
	ByContainer = "container"
	// ByPod: the process's pod has exactly one container holding slices
	// of its GPU, and the process is in the pod's own cgroup or in a
	// container the runtime's state did not name. Whatever the process
	// is, its use stays charged inside its own pod.
	ByPod = "pod"
)

// Attributed is a process and the container it was attributed to.
type Attributed struct {
	GPUProcess
	// Assignment is the container, from pod-resources.
	Assignment podresources.Assignment
	// PodUID is the pod's UID.
	PodUID string
	// By is ByContainer or ByPod.
	By string
}

// Unattributed is a process whose container could not be told, and why:
// a host process, or data that was missing. It is counted, never acted on.
type Unattributed struct {
	GPUProcess
	Reason string
}

// Unauthorized is a process in a pod that uses a GPU its container holds
// no slice of, known from positive evidence (the kubelet's checkpoint, the
// runtime's record), never from missing data.
type Unauthorized struct {
	GPUProcess
	// PodUID is its pod's UID; Namespace, Pod and ContainerName name it
	// where known (ContainerName is empty for a process in the pod's own
	// cgroup).
	PodUID, Namespace, Pod, ContainerName string
	Reason                                string
}

// Result is the outcome of Join.
type Result struct {
	Attributed   []Attributed
	Unattributed []Unattributed
	Unauthorized []Unauthorized
}

// Join attributes GPU processes to the containers holding slices, from
// the process's cgroup (the pod UID at the kubelet's pod level and the
// container ID at the runtime's level, never deeper), the runtime's record
// of that container (its name), the kubelet's device manager checkpoint
// (which containers of which pod UID hold which slices; nil when it could
// not be read) and pod-resources (the same by namespace and name). A
// process's environment plays no part: the tenant controls it.
func Join(procs []GPUProcess, assignments []podresources.Assignment, checkpoint []CheckpointEntry, resource string, names ContainerNames) Result {
	// Link each assignment to its pod UID through shared device IDs.
	owner := map[string]int{} // slice ID -> assignment index
	for i, a := range assignments {
		for _, id := range a.DeviceIDs {
			owner[id] = i
		}
	}
	podUID := make([]string, len(assignments))
	for _, e := range checkpoint {
		if e.Resource != resource {
			continue
		}
		for _, id := range e.DeviceIDs {
			if i, ok := owner[id]; ok && assignments[i].Container == e.Container {
				podUID[i] = e.PodUID
			}
		}
	}
	// holders says which containers of a pod hold slices of a GPU, from
	// the checkpoint; nil when the checkpoint is unknown.
	holders := func(uid, gpu string) map[string]bool {
		if checkpoint == nil {
			return nil
		}
		out := map[string]bool{}
		for _, e := range checkpoint {
			if e.PodUID == uid && e.Resource == resource && onGPU(e.DeviceIDs, gpu) {
				out[e.Container] = true
			}
		}
		return out
	}

	var r Result
	for _, p := range procs {
		c := p.Container
		if c.Key() == "" {
			r.Unattributed = append(r.Unattributed, Unattributed{GPUProcess: p, Reason: "not in a pod or container"})
			continue
		}
		var rc RuntimeContainer
		known := false
		if c.ContainerID != "" && names != nil {
			rc, known = names.Lookup(c.ContainerID)
		}
		uid := c.PodUID
		if known && rc.PodUID != "" {
			if uid != "" && uid != rc.PodUID {
				r.Unauthorized = append(r.Unauthorized, Unauthorized{GPUProcess: p, PodUID: uid,
					Reason: fmt.Sprintf("its cgroup names pod %s but the runtime's record of container %s names pod %s", uid, c.ContainerID, rc.PodUID)})
				continue
			}
			uid = rc.PodUID
		}
		deny := func(container, reason string) {
			u := Unauthorized{GPUProcess: p, PodUID: uid, ContainerName: container, Reason: reason}
			if known {
				u.Namespace, u.Pod = rc.PodNamespace, rc.PodName
			}
			for i, a := range assignments {
				if u.Pod == "" && uid != "" && podUID[i] == uid {
					u.Namespace, u.Pod = a.Namespace, a.Pod
				}
			}
			r.Unauthorized = append(r.Unauthorized, u)
		}
		skip := func(reason string) {
			r.Unattributed = append(r.Unattributed, Unattributed{GPUProcess: p, Reason: reason})
		}
		if uid == "" && !known {
			skip("no pod is known for container " + c.ContainerID)
			continue
		}
		has := holders(uid, p.GPU)
		if known && rc.Sandbox {
			deny("", "the pod's sandbox container uses the GPU")
			continue
		}
		if known {
			found := -1
			for i, a := range assignments {
				if a.Container != rc.Name || !onGPU(a.DeviceIDs, p.GPU) {
					continue
				}
				if (uid != "" && podUID[i] == uid) || (podUID[i] == "" && a.Namespace == rc.PodNamespace && a.Pod == rc.PodName) {
					found = i
					break
				}
			}
			switch {
			case found >= 0:
				r.Attributed = append(r.Attributed, Attributed{GPUProcess: p, Assignment: assignments[found], PodUID: uid, By: ByContainer})
			case has != nil && uid != "" && !has[rc.Name]:
				deny(rc.Name, fmt.Sprintf("container %s holds no slices of this GPU", rc.Name))
			default:
				skip(fmt.Sprintf("container %s: its slices of this GPU are not listed by pod-resources yet, or the kubelet's checkpoint is unreadable", rc.Name))
			}
			continue
		}
		if has == nil {
			skip("the kubelet's checkpoint is unreadable: which containers hold slices is unknown")
			continue
		}
		var candidates []int
		for i := range assignments {
			if podUID[i] == uid && onGPU(assignments[i].DeviceIDs, p.GPU) {
				candidates = append(candidates, i)
			}
		}
		switch {
		case len(has) == 0:
			deny("", "its pod holds no slices of this GPU")
		case len(has) == 1 && len(candidates) == 1:
			r.Attributed = append(r.Attributed, Attributed{GPUProcess: p, Assignment: assignments[candidates[0]], PodUID: uid, By: ByPod})
		case len(has) == 1:
			skip("its pod's slices of this GPU are not listed by pod-resources yet")
		case c.PodLevel():
			deny("", "it runs in its pod's own cgroup, outside every container, and several of the pod's containers hold slices of this GPU")
		default:
			skip(fmt.Sprintf("the runtime has no record of container %s, and several containers of its pod hold slices of this GPU", c.ContainerID))
		}
	}
	return r
}

func onGPU(ids []string, gpu string) bool {
	for _, id := range ids {
		if s, err := vgpu.ParseSliceID(id); err == nil && s.UUID == gpu {
			return true
		}
	}
	return false
}
