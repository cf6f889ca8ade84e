package node_test

import (
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/node"
)

const uidD = "44444444-4444-4444-4444-444444444444"

// migNode: GPU-a whole (pods a and b hold slices of it, twoPods), and
// GPU-c in MIG mode with two instances, read as devices of their own:
// pod c holds MIG-1 and pod d MIG-2, through NVIDIA-style resources.
func migNode(t *testing.T, procsA []node.Process, procs1, procs2 []node.Process) node.Input {
	t.Helper()
	return migNodeGPM(t, procsA, procs1, procs2, -1)
}

// migNodeGPM is migNode with each instance's SM utilization measured by
// GPM at util; a negative util measures none (a GPU without GPM).
func migNodeGPM(t *testing.T, procsA []node.Process, procs1, procs2 []node.Process, util float64) node.Input {
	t.Helper()
	parent := gpudev.Device{UUID: "GPU-c", Index: 2, MemoryBytes: 80 << 30}
	inst := func(uuid string, gi int, procs []node.Process) node.GPUReading {
		in := gpudev.InForce{MIGInstance: gpudev.MIGInstance{UUID: uuid, GPUInstanceID: gi, Profile: "3g.40gb", MemoryBytes: 40 << 30}, Parent: parent}
		d := parent
		d.UUID, d.MemoryBytes = uuid, in.MemoryBytes
		sample := gpudev.Sample{UUID: uuid, ProcessUtilizationUnsupported: true, UtilizationUnsupported: util < 0, Utilization: max(util, 0)}
		return node.GPUReading{Device: d, Instance: &in, SampleOK: true, ProcessesOK: true, Processes: procs, Sample: sample}
	}
	in := input(t, 0, []node.GPUReading{
		{Device: gpudev.Device{UUID: "GPU-a", Index: 0}, SampleOK: true, ProcessesOK: true, Processes: procsA},
		inst("MIG-1", 1, procs1), inst("MIG-2", 2, procs2),
	})
	in.Assignments = append(in.Assignments,
		node.Assignment{Namespace: "ml", Pod: "c", Container: "main", Instances: []string{"MIG-1"}},
		node.Assignment{Namespace: "ml", Pod: "d", Container: "main", Instances: []string{"MIG-2"}})
	in.Checkpoint = append(in.Checkpoint,
		node.CheckpointEntry{PodUID: uidC, Container: "main", Resource: "nvidia.com/mig-3g.40gb", DeviceIDs: []string{"MIG-1"}},
		node.CheckpointEntry{PodUID: uidD, Container: "main", Resource: "nvidia.com/mig-3g.40gb", DeviceIDs: []string{"MIG-2"}})
	return in
}

// TestMIGInstanceHoldingsAndUse: a container holding a MIG instance is
// measured on it: its processes' memory, its limits the whole instance,
// and its compute unmeasured (never a zero); the instance's allocation
// counts it.
func TestMIGInstanceHoldingsAndUse(t *testing.T) {
	s, _, problems := node.Build(migNode(t, nil, []node.Process{proc(30, uidC, 3<<30, 0)}, nil), node.State{})
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	c, d := byPod(s)["c"], byPod(s)["d"]
	if c.UUID != "MIG-1" || c.Index != 2 || c.MemoryUsedBytes != 3<<30 || c.Processes != 1 || c.Slices != 1 ||
		c.MemoryLimitBytes != 40<<30 || c.ComputeLimitRatio != 1 || !c.ComputeUnmeasured || c.PodUID != uidC {
		t.Errorf("pod c on its instance = %+v", c)
	}
	if d.UUID != "MIG-2" || d.Processes != 0 || !d.ComputeUnmeasured {
		t.Errorf("pod d, idle on its instance = %+v", d)
	}
	if len(s.Unauthorized) != 0 || len(s.Unattributed) != 0 {
		t.Errorf("unauthorized %+v, unattributed %+v", s.Unauthorized, s.Unattributed)
	}
	for _, dev := range s.Devices {
		if dev.UUID == "MIG-1" && (dev.Allocated != 1 || dev.Instance == nil || !dev.PerProcessUnmeasured()) {
			t.Errorf("MIG-1 device = %+v", dev)
		}
	}
	// The next sample integrates no busy time for it: its compute is
	// unknown.
	in := migNode(t, nil, []node.Process{proc(30, uidC, 3<<30, 0.9)}, nil)
	in.Time = in.Time.Add(1e9)
	s2, _, _ := node.Build(in, node.State{})
	if c := byPod(s2)["c"]; c.BusySeconds != 0 || c.SMUtilization != 0 || !c.LastActive.IsZero() {
		t.Errorf("compute made up on an instance: %+v", c)
	}
}

// TestMIGInstanceUnauthorized: a process of a pod on an instance its
// containers do not hold is unauthorized, whether the pod holds another
// instance or slices of a whole GPU; until now a GPU in MIG mode was not
// read, and such a pod was never caught.
func TestMIGInstanceUnauthorized(t *testing.T) {
	s, _, _ := node.Build(migNode(t, nil,
		[]node.Process{proc(31, uidD, 1<<30, 0)}, // pod d holds MIG-2, uses MIG-1
		[]node.Process{proc(32, uidA, 1<<30, 0)}, // pod a holds slices of GPU-a, uses MIG-2
	), node.State{})
	got := map[int]string{}
	for _, u := range s.Unauthorized {
		got[u.PID] = u.UUID + ": " + u.Reason
	}
	if len(got) != 2 || !strings.HasPrefix(got[31], "MIG-1: ") || !strings.HasPrefix(got[32], "MIG-2: ") {
		t.Errorf("unauthorized = %v; want pids 31 on MIG-1 and 32 on MIG-2", got)
	}
	if c := byPod(s)["c"]; c.Processes != 0 || c.MemoryUsedBytes != 0 {
		t.Errorf("pod d's process charged to pod c, which holds MIG-1: %+v", c)
	}
}

// TestMIGInstanceGone: a container holding an instance no longer in
// force (destroyed under it) is a problem to report, not a made-up
// holding.
func TestMIGInstanceGone(t *testing.T) {
	in := migNode(t, nil, nil, nil)
	in.Assignments[len(in.Assignments)-1].Instances = []string{"MIG-9"}
	s, _, problems := node.Build(in, node.State{})
	if len(problems) != 1 || !strings.Contains(problems[0].Err.Error(), "MIG-9 is not in force") {
		t.Errorf("problems = %v", problems)
	}
	if _, ok := byPod(s)["d"]; ok {
		t.Errorf("pod d holds an instance that does not exist: %+v", byPod(s)["d"])
	}
}

// TestMIGInstanceComputeByGPM: where GPM measures an instance's SM
// utilization, the one container holding the instance is charged it, and
// its busy time integrates; where two containers share one instance (one
// DRA claim), the instance's use cannot be split among them, and both
// read unmeasured rather than a made-up split.
func TestMIGInstanceComputeByGPM(t *testing.T) {
	var st node.State
	for i, at := range []float64{0, 1} {
		in := migNodeGPM(t, nil, []node.Process{proc(30, uidC, 1<<30, 0)}, nil, 0.6)
		in.Time = in.Time.Add(time.Duration(at * float64(time.Second)))
		var s *node.Snapshot
		s, st, _ = node.Build(in, st)
		c := byPod(s)["c"]
		if c.ComputeUnmeasured || !near(c.SMUtilization, 0.6) || (i == 1 && !near(c.BusySeconds, 0.6)) {
			t.Errorf("sample %d: pod c alone on its instance = %+v; want 0.6 measured by GPM", i, c)
		}
	}
	in := migNodeGPM(t, nil, nil, nil, 0.6)
	in.Assignments = append(in.Assignments, node.Assignment{Namespace: "ml", Pod: "c", Container: "side", Instances: []string{"MIG-1"}})
	s, _, _ := node.Build(in, node.State{})
	for _, c := range s.Containers {
		if c.UUID == "MIG-1" && (!c.ComputeUnmeasured || c.SMUtilization != 0) {
			t.Errorf("%s/%s shares MIG-1 and is charged %v; want unmeasured", c.Pod, c.Container, c.SMUtilization)
		}
	}
}
