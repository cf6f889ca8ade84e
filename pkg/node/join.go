package node

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// GPUProcess is one process seen on a GPU, with what its cgroups say.
type GPUProcess struct {
	// PID is the host PID.
	PID int
	// UUID is the UUID of the GPU the process uses.
	UUID string
	// Container is what the process's cgroups say; zero for a host
	// process.
	Container Cgroup
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
	Assignment Assignment
	// PodUID is the pod's UID.
	PodUID string
	// By is ByContainer or ByPod.
	By string
}

// Unattributed is a process whose container could not be told, and why:
// a host process, or data that was missing. It is counted, and never acted
// on as any one container's.
type Unattributed struct {
	GPUProcess
	Reason string
	// PodUID is the pod the process runs in where that is known (its
	// cgroup lies in the kubelet's tree, or the runtime's record names
	// it) while its container, or what that container holds, is not: the
	// process is held at its pod's level, against the total its pod's
	// containers hold of the GPU. Empty for a host process, a process
	// whose pod is not known, and use that is allowed unlimited (admin
	// access).
	PodUID string
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
	// Pods names the pods whose UIDs are known, by UID: from the kubelet's
	// checkpoints linked to pod-resources.
	Pods map[string]PodName
}

// PodName is a pod's namespace and name.
type PodName struct{ Namespace, Name string }

// DRA is what claims of gpuslice's DRA driver hold on the node, from
// sources the tenant does not control: pod-resources (which claims each
// container holds, by the claim UID in its CDI device names), the API
// server's list of the node's pods (which pod UID a namespace and name
// are) and the driver's record (what each claim holds of each GPU). With
// it, pod-resources lists every container of every pod, holding or not,
// so that a container of a listed pod without a claim is known to hold
// none. The kubelet's own DRA checkpoint is not read: it lies in the
// kubelet's root directory, beside every pod's volumes and secrets, and
// the kubelet replaces it by rename, so no narrower mount stays true.
type DRA struct {
	// Enabled is false on a node where the driver does not run: no pod
	// holds its claims, and the rest is not read.
	Enabled bool
	// PodUIDs are the node's pods' UIDs by namespace and name, as the API
	// server last listed them (UIDs are the API server's to give); nil
	// when no list was read. A pod listed since is named only through
	// the runtime's record of its containers until the next list.
	PodUIDs map[PodName]string
	// Prepared is the driver's record by claim UID; nil when it could not
	// be read.
	Prepared map[string]contract.PreparedClaim
}

// Stale says which of Join's host files are the last copy read whole (a
// later read failed: torn, garbage, a newer format) rather than this
// sample's. What they say of pods they list still holds (a container's
// devices and claims do not change while it runs); of a pod they do not
// list nothing is judged: its use is never called unauthorized on them.
type Stale struct {
	// Checkpoint is the kubelet's device manager checkpoint; Prepared the
	// DRA driver's record.
	Checkpoint, Prepared bool
}

// ClaimGPUs are the GPUs a prepared claim holds a share of, and those it
// has admin (monitoring) access to, which hold nothing.
func ClaimGPUs(c contract.PreparedClaim) (shares, admin map[string]bool) {
	shares, admin = map[string]bool{}, map[string]bool{}
	for _, g := range c.Grants {
		if g.Admin {
			admin[g.UUID] = true
		} else {
			shares[g.UUID] = true
		}
	}
	return shares, admin
}

// Join attributes GPU processes to the containers holding slices, from
// the process's cgroup (the pod UID at the kubelet's pod level and the
// container ID at the runtime's level, never deeper), the runtime's record
// of that container (its name), the kubelet's device manager checkpoint
// (which containers of which pod UID hold which slices; nil when it could
// not be read), pod-resources (the same by namespace and name, and the DRA
// claims each container holds) and, for DRA, the API server's pod UIDs and
// the driver's record. A process's environment plays no part: the
// tenant controls it.
//
// Where some of these are stale (a last good copy), pods they do not list
// are never judged from them.
func Join(procs []GPUProcess, assignments []Assignment, checkpoint []CheckpointEntry, resource string, names ContainerNames, dra DRA, stale Stale) Result {
	j := newJoiner(assignments, checkpoint, resource, names)
	j.stale = stale
	j.addDRA(dra)
	r := Result{Pods: map[string]PodName{}}
	for i, a := range j.assignments {
		if uid := j.podUID[i]; uid != "" {
			if _, seen := r.Pods[uid]; !seen {
				r.Pods[uid] = PodName{a.Namespace, a.Pod}
			}
		}
	}
	for _, p := range procs {
		j.place(p, &r)
	}
	return r
}

// joiner holds what Join reads every process against.
type joiner struct {
	assignments []Assignment
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
	// dra is the DRA input; admin says which GPUs each assignment has
	// admin access to, draOn which GPUs its claims reach (shares or admin).
	// reach are the GPUs each prepared claim reaches (shares or admin);
	// listed the assignments of each pod (namespace, name) pod-resources
	// listed; uidPod the pod each linked pod UID names. All are read once
	// per Join, not once per process.
	dra    DRA
	admin  []map[string]bool
	draOn  []map[string]bool
	reach  map[string]map[string]bool
	listed map[[2]string][]int
	uidPod map[string][2]string
	// stale says which inputs are a last good copy; checkpointed are the
	// pod UIDs the device manager checkpoint lists.
	stale        Stale
	checkpointed map[string]bool
}

func newJoiner(assignments []Assignment, checkpoint []CheckpointEntry, resource string, names ContainerNames) *joiner {
	owner := map[string]int{} // slice ID or MIG UUID -> assignment index
	for i, a := range assignments {
		for _, id := range a.DeviceIDs {
			owner[id] = i
		}
		for _, id := range a.Instances {
			owner[id] = i
		}
	}
	podUID := make([]string, len(assignments))
	for _, e := range checkpoint {
		if !held(e, resource) {
			continue
		}
		for _, id := range e.DeviceIDs {
			if i, ok := owner[id]; ok && assignments[i].Container == e.Container {
				podUID[i] = e.PodUID
			}
		}
	}
	j := &joiner{assignments: assignments, checkpoint: checkpoint, resource: resource, names: names, podUID: podUID,
		onGPU: make([]map[string]bool, len(assignments)), named: map[string][]int{}, held: map[[2]string]map[string]bool{},
		checkpointed: map[string]bool{}}
	for _, e := range checkpoint {
		j.checkpointed[e.PodUID] = true
	}
	for i, a := range assignments {
		j.onGPU[i] = gpusOf(a.DeviceIDs)
		for _, id := range a.Instances {
			j.onGPU[i][id] = true
		}
		j.named[a.Container] = append(j.named[a.Container], i)
	}
	for _, e := range checkpoint {
		if !held(e, resource) {
			continue
		}
		for uuid := range gpusOf(e.DeviceIDs) {
			k := [2]string{e.PodUID, uuid}
			if j.held[k] == nil {
				j.held[k] = map[string]bool{}
			}
			j.held[k][e.Container] = true
		}
	}
	return j
}

// held reports whether a checkpoint entry holds what the join reads:
// slices of the resource or of MIG instances (contract.IsSliceResource),
// or MIG instances whole, under whichever resource a device plugin
// offered them (their device IDs are their MIG UUIDs).
func held(e CheckpointEntry, resource string) bool {
	return contract.IsSliceResource(resource, e.Resource) || (len(e.DeviceIDs) > 0 && !slices.ContainsFunc(e.DeviceIDs, func(id string) bool { return !gpudev.IsMIGUUID(id) }))
}

// gpusOf is the set of GPUs slice IDs are of, and of MIG instances their
// IDs name (an instance is a device of its own); IDs that do neither are
// of none.
func gpusOf(ids []string) map[string]bool {
	out := make(map[string]bool, 1)
	for _, id := range ids {
		if s, err := vgpu.ParseSliceID(id); err == nil {
			out[s.UUID] = true
		} else if gpudev.IsMIGUUID(id) {
			out[id] = true
		}
	}
	return out
}

// addDRA adds what DRA claims hold: the GPUs each assignment's claims
// reach, and the pod UID of each assignment not linked through the device
// manager's checkpoint, from the API server's list of the node's pods.
func (j *joiner) addDRA(dra DRA) {
	j.dra = dra
	j.admin = make([]map[string]bool, len(j.assignments))
	j.draOn = make([]map[string]bool, len(j.assignments))
	j.reach = map[string]map[string]bool{}
	j.listed = map[[2]string][]int{}
	j.uidPod = map[string][2]string{}
	if !dra.Enabled {
		return
	}
	for uid, c := range dra.Prepared {
		shares, admin := ClaimGPUs(c)
		maps.Copy(shares, admin)
		j.reach[uid] = shares
	}
	for i, a := range j.assignments {
		pod := [2]string{a.Namespace, a.Pod}
		j.listed[pod] = append(j.listed[pod], i)
		j.admin[i], j.draOn[i] = map[string]bool{}, map[string]bool{}
		for _, uid := range a.Claims {
			c, ok := dra.Prepared[uid]
			if !ok {
				continue
			}
			for _, g := range c.Grants {
				j.draOn[i][g.UUID] = true
				if g.Admin {
					j.admin[i][g.UUID] = true
				} else {
					j.onGPU[i][g.UUID] = true
				}
			}
		}
		if j.podUID[i] == "" {
			j.podUID[i] = dra.PodUIDs[PodName{a.Namespace, a.Pod}]
		}
	}
	for i, a := range j.assignments {
		if uid := j.podUID[i]; uid != "" {
			if _, seen := j.uidPod[uid]; !seen {
				j.uidPod[uid] = [2]string{a.Namespace, a.Pod}
			}
		}
	}
}

// holders says which containers of a pod hold slices of a GPU, or DRA
// claims on it, from the checkpoints, pod-resources and the DRA driver's
// record; nil when that cannot be told.
func (j *joiner) holders(v verdict) map[string]bool {
	uid, uuid := v.uid, v.p.UUID
	if j.checkpoint == nil || (j.stale.Checkpoint && !j.checkpointed[uid]) {
		return nil // unreadable, or a last good copy from before the pod
	}
	out := map[string]bool{}
	for c := range j.held[[2]string{uid, uuid}] {
		out[c] = true
	}
	if !j.dra.Enabled {
		return out
	}
	// Which of the pod's containers hold claims on the GPU, only
	// pod-resources says, and only for a pod it listed: with DRA on it
	// lists every container of every running pod, so a pod it has not
	// listed (yet) cannot be told, and neither can one holding a claim
	// the driver's record does not have.
	pod, ok := j.podName(v)
	if !ok || len(j.listed[pod]) == 0 {
		return nil
	}
	for _, i := range j.listed[pod] {
		for _, claim := range j.assignments[i].Claims {
			if _, ok := j.reach[claim]; !ok {
				return nil
			}
		}
		if j.draOn[i][uuid] {
			out[j.assignments[i].Container] = true
		}
	}
	return out
}

// podName is the namespace and name of a process's pod: the runtime's
// record, else an assignment linked to its pod UID.
func (j *joiner) podName(v verdict) ([2]string, bool) {
	if v.known && v.rc.PodName != "" {
		return [2]string{v.rc.PodNamespace, v.rc.PodName}, true
	}
	pod, ok := j.uidPod[v.uid]
	return pod, ok && v.uid != ""
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

func (v verdict) attribute(a Assignment, by string) {
	v.r.Attributed = append(v.r.Attributed, Attributed{GPUProcess: v.p, Assignment: a, PodUID: v.uid, By: by})
}

func (v verdict) skip(reason string) {
	v.r.Unattributed = append(v.r.Unattributed, Unattributed{GPUProcess: v.p, Reason: reason})
}

// unknown records a process of a known pod whose container, or what that
// container holds, cannot be told: it is held at its pod's level.
func (v verdict) unknown(reason string) {
	v.r.Unattributed = append(v.r.Unattributed, Unattributed{GPUProcess: v.p, Reason: reason, PodUID: v.uid})
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
	switch {
	case v.known && v.rc.CgroupsPath != "" && !RecordedAt(c, v.rc.CgroupsPath):
		r.Unattributed = append(r.Unattributed, Unattributed{GPUProcess: p, Reason: fmt.Sprintf(
			"its cgroup is named after container %s, which the runtime created elsewhere (%s): a cgroup anyone named after a container is never charged to its pod", c.ContainerID, v.rc.CgroupsPath)})
		return
	case c.Outside && (!v.known || v.rc.CgroupsPath == ""):
		r.Unattributed = append(r.Unattributed, Unattributed{GPUProcess: p, Reason: "its cgroup lies outside the kubelet's tree (no kubepods level, or under a user's session) and no record of the runtime places a container there"})
		return
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
	has := j.holders(v)
	for _, i := range j.named[v.rc.Name] {
		a := j.assignments[i]
		ours := (v.uid != "" && j.podUID[i] == v.uid) || (j.podUID[i] == "" && a.Namespace == v.rc.PodNamespace && a.Pod == v.rc.PodName)
		switch {
		case !ours:
		case j.onGPU[i][v.p.UUID]:
			v.attribute(a, ByContainer)
			return
		case j.admin[i][v.p.UUID]:
			v.skip(fmt.Sprintf("container %s has admin access to this GPU: it may use it, and holds no share to limit it to", v.rc.Name))
			return
		}
	}
	if has != nil && v.uid != "" && !has[v.rc.Name] {
		v.deny(j, v.rc.Name, fmt.Sprintf("container %s holds no slices of this GPU", v.rc.Name))
		return
	}
	v.unknown(fmt.Sprintf("container %s: its slices or claims on this GPU are not listed by pod-resources yet, or the kubelet's checkpoint is unreadable (or, for DRA claims, the DRA driver's record lacks one)", v.rc.Name))
}

// byPod places a process of a container the runtime has no record of, or
// of its pod's own cgroup. Where one container of the pod holds the GPU,
// the process is charged to it (ByPod): whatever it is, the pod's use of
// the GPU is that container's, and it is held at the pod's level, where
// the pod's total is that one share. Where several do, it is never
// charged to any one of them: it is held at its pod's level, against the
// total its containers hold of the GPU.
func (j *joiner) byPod(v verdict) {
	has := j.holders(v)
	if has == nil {
		v.unknown("which of its pod's containers hold slices cannot be told: the kubelet's checkpoint is unreadable (or, for DRA claims, the driver's record lacks one, or the API server has not listed the pod yet), or pod-resources has not listed the pod yet")
		return
	}
	var candidates []int
	for i := range j.assignments {
		if j.podUID[i] == v.uid && (j.onGPU[i][v.p.UUID] || j.admin[i][v.p.UUID]) {
			candidates = append(candidates, i)
		}
	}
	podLevel := v.p.Container.PodLevel()
	switch {
	case len(has) == 0:
		v.deny(j, "", "its pod holds no slices of this GPU")
	case len(has) == 1 && len(candidates) == 1 && j.admin[candidates[0]][v.p.UUID] && !j.onGPU[candidates[0]][v.p.UUID]:
		v.skip("its pod's one container on this GPU has admin access to it, and holds no share to limit it to")
	case len(has) == 1 && len(candidates) == 1:
		v.attribute(j.assignments[candidates[0]], ByPod)
	case len(has) == 1 && len(candidates) == 0:
		v.unknown("its pod's slices of this GPU are not listed by pod-resources yet")
	case podLevel && len(has) > 1:
		v.deny(j, "", "it runs in its pod's own cgroup, outside every container, and several of the pod's containers hold slices of this GPU")
	default:
		v.unknown(fmt.Sprintf("the runtime has no readable record of container %s: which of its pod's containers it is cannot be told", v.p.Container.ContainerID))
	}
}

// RecordedAt reports whether every path of a process's container is the
// cgroup the runtime recorded creating it in (linux.cgroupsPath). A
// container whose paths could not be resolved has nothing to check.
func RecordedAt(c Cgroup, cgroupsPath string) bool {
	want := ExpandCgroupsPath(cgroupsPath)
	for _, p := range c.Paths {
		if p != want {
			return false
		}
	}
	return true
}

// ExpandCgroupsPath is the cgroup path an OCI bundle's linux.cgroupsPath
// names: a path as it is (the cgroupfs driver), or systemd's
// "<slice>:<prefix>:<name>", the unit "<prefix>-<name>.scope" in the
// slice, whose dashes nest it ("a-b.slice" is "/a.slice/a-b.slice").
func ExpandCgroupsPath(cp string) string {
	slice, rest, systemd := strings.Cut(cp, ":")
	if !systemd || strings.HasPrefix(cp, "/") {
		return path.Clean("/" + cp)
	}
	prefix, name, _ := strings.Cut(rest, ":")
	out := "/"
	if base, ok := strings.CutSuffix(slice, ".slice"); ok && base != "" && base != "-" {
		parts := strings.Split(base, "-")
		for i := range parts {
			out = path.Join(out, strings.Join(parts[:i+1], "-")+".slice")
		}
	}
	unit := name
	if prefix != "" {
		unit = prefix + "-" + name + ".scope"
	}
	return path.Join(out, unit)
}
