package node_test

import (
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// TestBuildHoldsUnknownAtPodLevel: processes in a pod with two containers
// on a GPU, in containers the runtime has no record of, make the pod one
// group: its containers' limits summed, all its processes' use, the pod's
// cgroup; both containers read unknown (no use integrated) and carry the
// pod's cgroup; enforcement sees the group, not them. A blind sample keeps
// the group held; a pod of which nothing is linked gets none.
func TestBuildHoldsUnknownAtPodLevel(t *testing.T) {
	t.Parallel()
	unnamed := strings.Repeat("e", 64)
	podDir := "/kubepods/burstable/pod" + uidA
	in := func(at time.Duration, gpus []node.GPUReading) node.Input {
		return node.Input{
			Time: t0.Add(at), MaxGap: 2 * time.Second, GPUs: gpus, Layout: layout(t), ResourceName: resource,
			Assignments: []node.Assignment{
				{Namespace: "ml", Pod: "two", Container: "x", DeviceIDs: []string{"GPU-a::0"}},
				{Namespace: "ml", Pod: "two", Container: "y", DeviceIDs: []string{"GPU-a::1"}},
			},
			Checkpoint: []node.CheckpointEntry{
				{PodUID: uidA, Container: "x", Resource: resource, DeviceIDs: []string{"GPU-a::0"}},
				{PodUID: uidA, Container: "y", Resource: resource, DeviceIDs: []string{"GPU-a::1"}},
			},
		}
	}
	hidden := node.Process{
		Process:   gpudev.Process{PID: 7, MemoryBytes: 30e9, SMUtilization: 0.9},
		Container: node.Cgroup{PodUID: uidA, ContainerID: unnamed, Paths: map[string]string{"": podDir + "/" + unnamed}},
	}
	other := strings.Repeat("f", 64)
	second := node.Process{
		Process:   gpudev.Process{PID: 8, MemoryBytes: 1e9, SMUtilization: 0.05},
		Container: node.Cgroup{PodUID: uidA, ContainerID: other, Paths: map[string]string{"": podDir + "/" + other}},
	}
	s, st, _ := node.Build(in(0, reading(hidden, second)), node.State{})
	if len(s.Groups) != 1 {
		t.Fatalf("groups = %+v; want one", s.Groups)
	}
	g := s.Groups[0]
	if g.Pod != "two" || g.Container != "" || g.Slices != 2 || g.MemoryLimitBytes != 20e9 || !near(g.ComputeLimitRatio, 0.5) ||
		g.MemoryUsedBytes != 31e9 || !near(g.SMUtilization, 0.95) || g.Processes != 2 || g.Cgroup.Paths[""] != podDir || g.Unknown == "" {
		t.Errorf("group = %+v", g)
	}
	for _, c := range s.Containers {
		if c.Unknown == "" || c.Cgroup.Key() != "pod-"+uidA {
			t.Errorf("container %s: unknown %q, cgroup %+v; want unknown, held at the pod", c.Container, c.Unknown, c.Cgroup)
		}
	}
	if e := s.Enforced(); len(e) != 1 || e[0].Container != "" {
		t.Errorf("enforced = %+v; want the group alone", e)
	}

	// A second sample: nothing integrated for unknown containers.
	s, st, _ = node.Build(in(time.Second, reading(hidden, second)), st)
	for _, c := range s.Containers {
		if c.BusySeconds != 0 {
			t.Errorf("container %s integrated %.2f s of use that cannot be told", c.Container, c.BusySeconds)
		}
	}

	// Blind: the group is kept, held, its use unknown.
	blind := reading()
	blind[0].ProcessesOK = false
	s, _, _ = node.Build(in(2*time.Second, blind), st)
	if len(s.Groups) != 1 || !s.Groups[0].Blind || s.Groups[0].Cgroup.Key() != "pod-"+uidA {
		t.Errorf("blind sample: groups %+v; want the pod kept, blind", s.Groups)
	}
	for _, c := range s.Enforced() {
		if c.Cgroup.Key() != "pod-"+uidA || !c.Blind {
			t.Errorf("blind sample: enforced %+v; want held at the pod", c)
		}
	}

	// The checkpoint unreadable: the pod's UID names no pod, no group.
	noCheckpoint := in(0, reading(hidden))
	noCheckpoint.Checkpoint = nil
	s, _, _ = node.Build(noCheckpoint, node.State{})
	if len(s.Groups) != 0 || len(s.Unattributed) != 1 || s.Unattributed[0].PodUID != uidA {
		t.Errorf("no checkpoint: groups %+v, unattributed %+v; want none, and the process counted", s.Groups, s.Unattributed)
	}
}
