package attribution

import (
	"slices"
	"sort"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// GPUProcess is one process seen on a GPU, with what is known of its
// container.
type GPUProcess struct {
	// PID is the host PID.
	PID int
	// GPU is the UUID of the GPU the process uses.
	GPU string
	// Container is what the process's cgroups say; zero when unknown.
	Container Container
	// EnvSliceIDs are the slice IDs in the process's GPUSLICE_SLICE_IDS, if
	// it could be read.
	EnvSliceIDs []string
}

// How a process was attributed.
const (
	// ByCgroup: the process's pod came from its cgroup and the pod has one
	// container with slices on the process's GPU, or the env picked among
	// that pod's containers.
	ByCgroup = "cgroup"
	// ByEnv: no pod UID could be linked (no checkpoint), so the process's
	// GPUSLICE_SLICE_IDS named its container. A process can forge its env,
	// so this is weaker.
	ByEnv = "env"
)

// Attributed is a process and the container it was attributed to.
type Attributed struct {
	GPUProcess
	// Assignment is the container, from pod-resources.
	Assignment podresources.Assignment
	// PodUID is the pod's UID, when known.
	PodUID string
	// By is ByCgroup or ByEnv.
	By string
}

// Unattributed is a process no container could be found for, and why.
type Unattributed struct {
	GPUProcess
	Reason string
}

// Join attributes GPU processes to the containers holding slices. Pod UIDs
// come from the kubelet's checkpoint (entries of other resources are
// ignored); without them, attribution falls back to the processes' env.
func Join(procs []GPUProcess, assignments []podresources.Assignment, checkpoint []CheckpointEntry, resource string) ([]Attributed, []Unattributed) {
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
	onGPU := func(i int, gpu string) bool {
		for _, id := range assignments[i].DeviceIDs {
			if s, err := vgpu.ParseSliceID(id); err == nil && s.UUID == gpu {
				return true
			}
		}
		return false
	}
	byEnv := func(p GPUProcess, candidates []int) (int, bool) {
		if len(p.EnvSliceIDs) == 0 {
			return 0, false
		}
		want := slices.Clone(p.EnvSliceIDs)
		sort.Strings(want)
		for _, i := range candidates {
			if slices.Equal(want, assignments[i].DeviceIDs) {
				return i, true
			}
		}
		return 0, false
	}

	var ok []Attributed
	var bad []Unattributed
	for _, p := range procs {
		if p.Container.PodUID != "" && hasAny(podUID) {
			var candidates []int
			for i := range assignments {
				if podUID[i] == p.Container.PodUID && onGPU(i, p.GPU) {
					candidates = append(candidates, i)
				}
			}
			switch {
			case len(candidates) == 1:
				ok = append(ok, Attributed{GPUProcess: p, Assignment: assignments[candidates[0]], PodUID: p.Container.PodUID, By: ByCgroup})
			case len(candidates) == 0:
				bad = append(bad, Unattributed{GPUProcess: p, Reason: "its pod holds no slices of this GPU"})
			default:
				if i, found := byEnv(p, candidates); found {
					ok = append(ok, Attributed{GPUProcess: p, Assignment: assignments[i], PodUID: p.Container.PodUID, By: ByCgroup})
				} else {
					bad = append(bad, Unattributed{GPUProcess: p, Reason: "several containers of its pod hold slices of this GPU and its env names none"})
				}
			}
			continue
		}
		var candidates []int
		for i := range assignments {
			if onGPU(i, p.GPU) {
				candidates = append(candidates, i)
			}
		}
		if i, found := byEnv(p, candidates); found {
			ok = append(ok, Attributed{GPUProcess: p, Assignment: assignments[i], PodUID: podUID[i], By: ByEnv})
			continue
		}
		reason := "no pod UID and no matching " + deviceplugin.EnvSliceIDs + " in its environment"
		if p.Container.ContainerID == "" {
			reason = "not in a container"
		}
		bad = append(bad, Unattributed{GPUProcess: p, Reason: reason})
	}
	return ok, bad
}

// EnvSliceIDs extracts GPUSLICE_SLICE_IDS from a NUL-separated environ
// (the content of /proc/<pid>/environ).
func EnvSliceIDs(environ []byte) []string {
	for _, kv := range strings.Split(string(environ), "\x00") {
		if v, ok := strings.CutPrefix(kv, deviceplugin.EnvSliceIDs+"="); ok && v != "" {
			return strings.Split(v, ",")
		}
	}
	return nil
}

func hasAny(s []string) bool {
	for _, v := range s {
		if v != "" {
			return true
		}
	}
	return false
}
