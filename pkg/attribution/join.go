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
	j := newJoiner(assignments, checkpoint, resource, names)
	var r Result
	for _, p := range procs {
		j.place(p, &r)
	}
	return r
}

// joiner holds what Join reads every process against.
type joiner struct {
	assignments []podresources.Assignment
	checkpoint  []CheckpointEntry
	resource    string
	names       ContainerNames
	// podUID is each assignment's pod UID, linked through the device IDs
	// it shares with the checkpoint; empty when unknown.
	podUID []string
	// onGPU says which GPUs each assignment holds slices of, and named
	// which assignments are of a container name: read once per Join, not
	// once per process.
	onGPU []map[string]bool
	named map[string][]int
	// held says, by pod UID and GPU, which of the pod's containers the
	// checkpoint says hold slices of it.
	held map[[2]string]map[string]bool
}

func newJoiner(assignments []podresources.Assignment, checkpoint []CheckpointEntry, resource string, names ContainerNames) *joiner {
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
	j := &joiner{assignments: assignments, checkpoint: checkpoint, resource: resource, names: names, podUID: podUID,
		onGPU: make([]map[string]bool, len(assignments)), named: map[string][]int{}, held: map[[2]string]map[string]bool{}}
	for i, a := range assignments {
		j.onGPU[i] = gpusOf(a.DeviceIDs)
		j.named[a.Container] = append(j.named[a.Container], i)
	}
	for _, e := range checkpoint {
		if e.Resource != resource {
			continue
		}
		for gpu := range gpusOf(e.DeviceIDs) {
			k := [2]string{e.PodUID, gpu}
			if j.held[k] == nil {
				j.held[k] = map[string]bool{}
			}
			j.held[k][e.Container] = true
		}
	}
	return j
}

// gpusOf is the set of GPUs slice IDs are of; IDs that do not parse are of
// none.
func gpusOf(ids []string) map[string]bool {
	out := make(map[string]bool, 1)
	for _, id := range ids {
		if s, err := vgpu.ParseSliceID(id); err == nil {
			out[s.UUID] = true
		}
	}
	return out
}

// holders says which containers of a pod hold slices of a GPU, from the
// checkpoint; nil when the checkpoint is unknown.
func (j *joiner) holders(uid, gpu string) map[string]bool {
	if j.checkpoint == nil {
		return nil
	}
	if h := j.held[[2]string{uid, gpu}]; h != nil {
		return h
	}
	return map[string]bool{}
}

// verdict records what became of one process.
type verdict struct {
	r   *Result
	p   GPUProcess
	uid string
	rc  RuntimeContainer
	// known is true when the runtime has a record of the container.
	known bool
}

func (v verdict) attribute(a podresources.Assignment, by string) {
	v.r.Attributed = append(v.r.Attributed, Attributed{GPUProcess: v.p, Assignment: a, PodUID: v.uid, By: by})
}

func (v verdict) skip(reason string) {
	v.r.Unattributed = append(v.r.Unattributed, Unattributed{GPUProcess: v.p, Reason: reason})
}

func (v verdict) deny(j *joiner, container, reason string) {
	u := Unauthorized{GPUProcess: v.p, PodUID: v.uid, ContainerName: container, Reason: reason}
	if v.known {
		u.Namespace, u.Pod = v.rc.PodNamespace, v.rc.PodName
	}
	for i, a := range j.assignments {
		if u.Pod == "" && v.uid != "" && j.podUID[i] == v.uid {
			u.Namespace, u.Pod = a.Namespace, a.Pod
		}
	}
	v.r.Unauthorized = append(v.r.Unauthorized, u)
}

// place attributes one process, or says why not.
func (j *joiner) place(p GPUProcess, r *Result) {
	c := p.Container
	if c.Key() == "" {
		r.Unattributed = append(r.Unattributed, Unattributed{GPUProcess: p, Reason: "not in a pod or container"})
		return
	}
	v := verdict{r: r, p: p, uid: c.PodUID}
	if c.ContainerID != "" && j.names != nil {
		v.rc, v.known = j.names.Lookup(c.ContainerID)
	}
	if v.known && v.rc.PodUID != "" {
		if v.uid != "" && v.uid != v.rc.PodUID {
			r.Unauthorized = append(r.Unauthorized, Unauthorized{GPUProcess: p, PodUID: v.uid,
				Reason: fmt.Sprintf("its cgroup names pod %s but the runtime's record of container %s names pod %s", v.uid, c.ContainerID, v.rc.PodUID)})
			return
		}
		v.uid = v.rc.PodUID
	}
	switch {
	case v.uid == "" && !v.known:
		v.skip("no pod is known for container " + c.ContainerID)
	case v.known && v.rc.Sandbox:
		v.deny(j, "", "the pod's sandbox container uses the GPU")
	case v.known:
		j.byName(v)
	default:
		j.byPod(v)
	}
}

// byName attributes a process of a container the runtime has a record of:
// by the container's name in its pod.
func (j *joiner) byName(v verdict) {
	has := j.holders(v.uid, v.p.GPU)
	for _, i := range j.named[v.rc.Name] {
		a := j.assignments[i]
		if !j.onGPU[i][v.p.GPU] {
			continue
		}
		if (v.uid != "" && j.podUID[i] == v.uid) || (j.podUID[i] == "" && a.Namespace == v.rc.PodNamespace && a.Pod == v.rc.PodName) {
			v.attribute(a, ByContainer)
			return
		}
	}
	if has != nil && v.uid != "" && !has[v.rc.Name] {
		v.deny(j, v.rc.Name, fmt.Sprintf("container %s holds no slices of this GPU", v.rc.Name))
		return
	}
	v.skip(fmt.Sprintf("container %s: its slices of this GPU are not listed by pod-resources yet, or the kubelet's checkpoint is unreadable", v.rc.Name))
}

// byPod attributes a process of a container the runtime has no record of:
// by its pod, when one container of the pod holds slices of the GPU.
func (j *joiner) byPod(v verdict) {
	has := j.holders(v.uid, v.p.GPU)
	if has == nil {
		v.skip("the kubelet's checkpoint is unreadable: which containers hold slices is unknown")
		return
	}
	var candidates []int
	for i := range j.assignments {
		if j.podUID[i] == v.uid && j.onGPU[i][v.p.GPU] {
			candidates = append(candidates, i)
		}
	}
	switch {
	case len(has) == 0:
		v.deny(j, "", "its pod holds no slices of this GPU")
	case len(has) == 1 && len(candidates) == 1:
		v.attribute(j.assignments[candidates[0]], ByPod)
	case len(has) == 1:
		v.skip("its pod's slices of this GPU are not listed by pod-resources yet")
	case v.p.Container.PodLevel():
		v.deny(j, "", "it runs in its pod's own cgroup, outside every container, and several of the pod's containers hold slices of this GPU")
	default:
		v.skip(fmt.Sprintf("the runtime has no record of container %s, and several containers of its pod hold slices of this GPU", v.p.Container.ContainerID))
	}
}
