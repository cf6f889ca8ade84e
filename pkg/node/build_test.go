package node_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

const (
	resource = "nvidia.com/vgpu"
	uidA     = "11111111-1111-1111-1111-111111111111"
	uidB     = "22222222-2222-2222-2222-222222222222"
	uidC     = "33333333-3333-3333-3333-333333333333"
)

var t0 = time.Unix(1_000_000, 0)

func layout(t *testing.T) *vgpu.Layout {
	t.Helper()
	l, err := vgpu.NewLayout([]vgpu.GPU{
		{UUID: "GPU-a", Index: 0, MemoryBytes: 40e9},
		{UUID: "GPU-b", Index: 1, MemoryBytes: 40e9},
	}, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 4}})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// twoPods: pod A holds 1 slice of GPU-a, pod B 2 slices of GPU-a; pod C
// holds nothing.
var twoPods = struct {
	assignments []node.Assignment
	checkpoint  []node.CheckpointEntry
}{
	assignments: []node.Assignment{
		{Namespace: "ml", Pod: "a", Container: "main", DeviceIDs: []string{"GPU-a::0"}},
		{Namespace: "ml", Pod: "b", Container: "main", DeviceIDs: []string{"GPU-a::1", "GPU-a::2"}},
	},
	checkpoint: []node.CheckpointEntry{
		{PodUID: uidA, Container: "main", Resource: resource, DeviceIDs: []string{"GPU-a::0"}},
		{PodUID: uidB, Container: "main", Resource: resource, DeviceIDs: []string{"GPU-a::1", "GPU-a::2"}},
	},
}

func proc(pid int, uid string, memory uint64, sm float64) node.Process {
	return node.Process{
		Process:   gpudev.Process{PID: pid, MemoryBytes: memory, SMUtilization: sm},
		Container: node.Cgroup{PodUID: uid, Paths: map[string]string{"": "/kubepods/pod" + uid}},
	}
}

// reading is GPU-a with procs and an idle GPU-b, both read.
func reading(procs ...node.Process) []node.GPUReading {
	return []node.GPUReading{
		{Device: gpudev.Device{UUID: "GPU-a", Index: 0}, SampleOK: true, ProcessesOK: true, Processes: procs},
		{Device: gpudev.Device{UUID: "GPU-b", Index: 1}, SampleOK: true, ProcessesOK: true},
	}
}

func input(t *testing.T, at time.Duration, gpus []node.GPUReading) node.Input {
	return node.Input{
		Time: t0.Add(at), MaxGap: 2 * time.Second, GPUs: gpus,
		Assignments: twoPods.assignments, Checkpoint: twoPods.checkpoint,
		Layout: layout(t), ResourceName: resource,
	}
}

func byPod(s *node.Snapshot) map[string]node.Container {
	out := map[string]node.Container{}
	for _, c := range s.Containers {
		out[c.Pod] = c
	}
	return out
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// TestBuildAccounting runs the accounting over a sequence of samples, as
// the sampler does, and checks each snapshot.
func TestBuildAccounting(t *testing.T) {
	type step struct {
		name  string
		in    func(t *testing.T) node.Input
		check func(t *testing.T, s *node.Snapshot, problems []node.Problem)
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"use is summed per container and integrated over time", []step{
			{"first sample integrates nothing", func(t *testing.T) node.Input {
				return input(t, 0, reading(proc(10, uidA, 1e9, 0.2), proc(11, uidA, 2e9, 0.1), proc(20, uidB, 5e9, 0.5)))
			}, func(t *testing.T, s *node.Snapshot, _ []node.Problem) {
				a, b := byPod(s)["a"], byPod(s)["b"]
				if a.MemoryUsedBytes != 3e9 || !near(a.SMUtilization, 0.3) || a.Processes != 2 || a.BusySeconds != 0 {
					t.Errorf("a = %+v", a)
				}
				if b.Slices != 2 || b.MemoryLimitBytes != 20e9 || !near(b.ComputeLimitRatio, 0.5) || b.PodUID != uidB {
					t.Errorf("b's limits = %+v", b)
				}
				if !a.LastActive.Equal(t0) || a.Cgroup.PodUID != uidA {
					t.Errorf("a last active %s, cgroup %+v", a.LastActive, a.Cgroup)
				}
				if s.Devices[0].Allocated != 3 || s.Devices[0].Slices != 4 || s.Devices[1].Allocated != 0 {
					t.Errorf("devices = %+v", s.Devices)
				}
			}},
			{"1.5 s later", func(t *testing.T) node.Input {
				return input(t, 1500*time.Millisecond, reading(proc(10, uidA, 1e9, 0.2), proc(20, uidB, 5e9, 0)))
			}, func(t *testing.T, s *node.Snapshot, _ []node.Problem) {
				a, b := byPod(s)["a"], byPod(s)["b"]
				if !near(a.BusySeconds, 0.3) || !a.LastActive.Equal(t0.Add(1500*time.Millisecond)) {
					t.Errorf("a = %+v", a)
				}
				if b.BusySeconds != 0 || !b.LastActive.Equal(t0) {
					t.Errorf("an idle container was credited, or its last activity moved: %+v", b)
				}
			}},
			{"a 60 s stall counts as two intervals", func(t *testing.T) node.Input {
				return input(t, 61500*time.Millisecond, reading(proc(10, uidA, 1e9, 1)))
			}, func(t *testing.T, s *node.Snapshot, _ []node.Problem) {
				if a := byPod(s)["a"]; !near(a.BusySeconds, 0.3+2) {
					t.Errorf("a busy %.3f after a stall, want 2.3", a.BusySeconds)
				}
			}},
			{"a clock that went back integrates nothing", func(t *testing.T) node.Input {
				return input(t, time.Second, reading(proc(10, uidA, 1e9, 1)))
			}, func(t *testing.T, s *node.Snapshot, _ []node.Problem) {
				if a := byPod(s)["a"]; !near(a.BusySeconds, 2.3) {
					t.Errorf("a busy %.3f after the clock went back, want 2.3", a.BusySeconds)
				}
			}},
		}},
		{"a blind GPU keeps what was known and makes up no zero", []step{
			{"seen", func(t *testing.T) node.Input {
				return input(t, 0, reading(proc(10, uidA, 1e9, 0.5)))
			}, nil},
			{"used", func(t *testing.T) node.Input {
				return input(t, time.Second, reading(proc(10, uidA, 1e9, 0.5)))
			}, nil},
			{"processes unreadable", func(t *testing.T) node.Input {
				g := reading()
				g[0].ProcessesOK, g[0].Processes = false, nil
				return input(t, 2*time.Second, g)
			}, func(t *testing.T, s *node.Snapshot, _ []node.Problem) {
				a := byPod(s)["a"]
				if !a.Blind || !near(a.BusySeconds, 0.5) || a.Cgroup.PodUID != uidA || !a.LastActive.Equal(t0.Add(time.Second)) {
					t.Errorf("blind a = %+v", a)
				}
				if !s.Devices[0].Blind() || s.Devices[1].Blind() {
					t.Errorf("devices blind: %v %v", s.Devices[0].Blind(), s.Devices[1].Blind())
				}
			}},
		}},
		{"a container that lets go starts again from zero", []step{
			{"used", func(t *testing.T) node.Input {
				return input(t, 0, reading(proc(10, uidA, 1e9, 1)))
			}, nil},
			{"used", func(t *testing.T) node.Input {
				return input(t, time.Second, reading(proc(10, uidA, 1e9, 1)))
			}, nil},
			{"gone from pod-resources", func(t *testing.T) node.Input {
				in := input(t, 2*time.Second, reading())
				in.Assignments = in.Assignments[1:]
				return in
			}, func(t *testing.T, s *node.Snapshot, _ []node.Problem) {
				if _, ok := byPod(s)["a"]; ok || len(s.Containers) != 1 {
					t.Errorf("containers = %+v", s.Containers)
				}
			}},
			{"back", func(t *testing.T) node.Input {
				return input(t, 3*time.Second, reading(proc(10, uidA, 1e9, 1)))
			}, func(t *testing.T, s *node.Snapshot, _ []node.Problem) {
				// 1 s at full use since the last sample; its earlier 1 s is
				// not carried over.
				if a := byPod(s)["a"]; !near(a.BusySeconds, 1) {
					t.Errorf("a busy %.2f after coming back, want 1", a.BusySeconds)
				}
			}},
		}},
		{"tenants' tricks", []step{
			{"over-reported SM, conflicting cgroups, a pod with no slices", func(t *testing.T) node.Input {
				conflict := proc(30, uidA, 1e9, 0.9)
				conflict.Conflict = "cgroup lines name two containers"
				return input(t, 0, reading(proc(10, uidA, 1e9, 0.8), proc(11, uidA, 1e9, 0.7), conflict, proc(40, uidC, 1e9, 1)))
			}, func(t *testing.T, s *node.Snapshot, _ []node.Problem) {
				if a := byPod(s)["a"]; a.SMUtilization != 1 || a.Processes != 2 {
					t.Errorf("a = %+v, want SM clamped to 1 over its 2 processes", a)
				}
				var pids []int
				for _, u := range s.Unauthorized {
					pids = append(pids, u.PID)
				}
				if len(pids) != 2 || pids[0] != 30 || pids[1] != 40 {
					t.Errorf("unauthorized = %+v, want pids 30 (conflict) and 40 (no slices)", s.Unauthorized)
				}
			}},
		}},
		{"unknown slice IDs without a checkpoint grant are a problem, not a crash", []step{
			{"", func(t *testing.T) node.Input {
				in := input(t, 0, reading())
				in.Assignments = append(in.Assignments, node.Assignment{Namespace: "ml", Pod: "x", Container: "main", DeviceIDs: []string{"GPU-z::9"}})
				return in
			}, func(t *testing.T, s *node.Snapshot, problems []node.Problem) {
				if len(problems) != 1 || problems[0].Source != node.SourcePodResources || !strings.Contains(problems[0].Err.Error(), "ml/x/main") {
					t.Errorf("problems = %+v", problems)
				}
				if len(s.Containers) != 2 {
					t.Errorf("containers = %+v", s.Containers)
				}
			}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var state node.State
			for _, st := range tc.steps {
				snap, next, problems := node.Build(st.in(t), state)
				state = next
				if st.check != nil {
					t.Run(st.name, func(t *testing.T) { st.check(t, snap, problems) })
				}
			}
		})
	}
}

// TestBuildDoesNotChangeItsInputs: the previous state and the readings
// stay as they were, so a snapshot, once published, is never modified.
func TestBuildDoesNotChangeItsInputs(t *testing.T) {
	in := input(t, 0, reading(proc(10, uidA, 1e9, 0.5)))
	first, state, _ := node.Build(in, node.State{})
	before := byPod(first)["a"]
	_, _, _ = node.Build(input(t, time.Second, reading(proc(10, uidA, 1e9, 1))), state)
	again, _, _ := node.Build(input(t, time.Second, reading(proc(10, uidA, 1e9, 1))), state)
	if after := byPod(first)["a"]; after.BusySeconds != before.BusySeconds {
		t.Errorf("a published snapshot changed: busy %.2f -> %.2f", before.BusySeconds, after.BusySeconds)
	}
	if a := byPod(again)["a"]; !near(a.BusySeconds, 1) {
		t.Errorf("building twice from one state gave busy %.2f the second time, want 1 (the state was changed)", a.BusySeconds)
	}
	if in.GPUs[0].Processes[0].SMUtilization != 0.5 {
		t.Error("the readings were changed")
	}
}
