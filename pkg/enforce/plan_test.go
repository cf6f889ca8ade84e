package enforce

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// TestPlanMemory: the watchdog's decisions, from a snapshot entry and what
// it did before, without processes: an overrun is new once, the newest
// processes go first until the container fits, a container over again by
// processes not killed yet loses its cgroup, and processes already killed
// count for nothing.
func TestPlanMemory(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	procs := []nvml.Process{{PID: 10, MemoryBytes: 300 * mib}, {PID: 11, MemoryBytes: 300 * mib}, {PID: 12, MemoryBytes: 300 * mib}}
	c := node.Container{Namespace: "ml", Pod: "p", Container: "c", MemoryLimitBytes: 500 * mib, Procs: procs}
	start := func(pid int) uint64 { return uint64(pid) } // a larger PID started later
	tests := map[string]struct {
		c      node.Container
		st     MemoryStats
		policy MemoryPolicy
		want   MemoryPlan
	}{
		"within its limit": {
			c: node.Container{MemoryLimitBytes: 1000 * mib, Procs: procs}, policy: MemoryKill,
			want: MemoryPlan{Used: 900 * mib},
		},
		"first overrun: the newest until it fits": {
			c: c, policy: MemoryKill,
			want: MemoryPlan{Used: 900 * mib, Over: true, NewOverrun: true, Kill: []nvml.Process{procs[2], procs[1]}},
		},
		"first overrun, policy log: reported only": {
			c: c, policy: MemoryLog,
			want: MemoryPlan{Used: 900 * mib, Over: true, NewOverrun: true},
		},
		"over again by processes not killed: the cgroup": {
			c: c, policy: MemoryKill, st: MemoryStats{over: true},
			want: MemoryPlan{Used: 900 * mib, Over: true, KillCgroup: true, Kill: procs},
		},
		"over again, policy log: no new overrun, nothing killed": {
			c: c, policy: MemoryLog, st: MemoryStats{over: true},
			want: MemoryPlan{Used: 900 * mib, Over: true},
		},
		"killed processes still listed count for nothing": {
			c: c, policy: MemoryKill, st: MemoryStats{over: true, killed: map[int]bool{11: true, 12: true}},
			want: MemoryPlan{Used: 300 * mib},
		},
		"killed processes gone from NVML are forgotten": {
			c: node.Container{MemoryLimitBytes: 1000 * mib, Procs: procs[:1]}, policy: MemoryKill, st: MemoryStats{killed: map[int]bool{12: true, 11: true}},
			want: MemoryPlan{Used: 300 * mib, Gone: []int{11, 12}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got := PlanMemory(tc.c, tc.st, tc.policy, start)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

// TestPlanUnauthorized: what a round decides about unauthorized GPU use,
// without processes or cgroups: reported once, killed or frozen by
// policy, never ended in an unknown or exempt namespace, a process whose
// cgroup lines conflict killed even under freeze, and a frozen cgroup no
// use holds any more thawed.
func TestPlanUnauthorized(t *testing.T) {
	t.Parallel()
	ctr := func(id string) node.Cgroup { return node.Cgroup{PodUID: "uid-" + id, ContainerID: id} }
	use := func(pid int, ns, id string) node.Unauthorized {
		u := node.Unauthorized{GPUProcess: node.GPUProcess{PID: pid, UUID: "GPU-1"}, Namespace: ns, Pod: "p", Reason: "no slice"}
		if id != "" {
			u.Container = ctr(id)
		}
		return u
	}
	tests := map[string]struct {
		uses     []node.Unauthorized
		policy   UnauthorizedPolicy
		reported map[int]bool
		parked   map[string]bool
		check    func(t *testing.T, p UnauthorizedPlan)
	}{
		"kill: reported once, killed every round": {
			uses: []node.Unauthorized{use(1, "ml", "a"), use(2, "ml", "b")}, policy: UnauthorizedKill, reported: map[int]bool{1: true},
			check: func(t *testing.T, p UnauthorizedPlan) {
				if len(p.Report) != 1 || p.Report[0].PID != 2 || p.Report[0].Action != UnauthorizedKill || len(p.Kill) != 2 {
					t.Errorf("plan %+v; want 2 reported, both killed", p)
				}
			},
		},
		"unknown namespace: reported, never ended": {
			uses: []node.Unauthorized{use(3, "", "a")}, policy: UnauthorizedKill,
			check: func(t *testing.T, p UnauthorizedPlan) {
				if len(p.Kill)+len(p.Freeze) != 0 || len(p.Report) != 1 || p.Report[0].Action != UnauthorizedLog {
					t.Errorf("plan %+v; want reported only", p)
				}
			},
		},
		"exempt namespace: reported only": {
			uses: []node.Unauthorized{use(4, "gpu-operator", "a")}, policy: UnauthorizedFreeze,
			check: func(t *testing.T, p UnauthorizedPlan) {
				if len(p.Kill)+len(p.Freeze) != 0 || p.Report[0].Action != UnauthorizedLog {
					t.Errorf("plan %+v; want reported only", p)
				}
			},
		},
		"freeze: new cgroups frozen, frozen ones again, released ones thawed": {
			uses: []node.Unauthorized{use(5, "ml", "a"), use(6, "ml", "a"), use(7, "ml", "b")}, policy: UnauthorizedFreeze,
			parked: map[string]bool{"b": true, "gone": true},
			check: func(t *testing.T, p UnauthorizedPlan) {
				want := UnauthorizedPlan{Freeze: map[string]node.Cgroup{"a": ctr("a")}, Refreeze: []string{"b"}, Thaw: []string{"gone"}}
				if diff := cmp.Diff(want, UnauthorizedPlan{Freeze: p.Freeze, Refreeze: p.Refreeze, Thaw: p.Thaw}); diff != "" || len(p.Kill) != 0 {
					t.Errorf("(-want +got)\n%s\nkills %v", diff, p.Kill)
				}
			},
		},
		"freeze: a process no one cgroup holds is killed": {
			uses: []node.Unauthorized{use(8, "ml", "")}, policy: UnauthorizedFreeze,
			check: func(t *testing.T, p UnauthorizedPlan) {
				if len(p.Kill) != 1 || len(p.Freeze) != 0 {
					t.Errorf("plan %+v; want it killed", p)
				}
			},
		},
		"a reported process gone is forgotten": {
			uses: nil, policy: UnauthorizedKill, reported: map[int]bool{9: true},
			check: func(t *testing.T, p UnauthorizedPlan) {
				if !cmp.Equal(p.Forget, []int{9}) {
					t.Errorf("forget %v; want [9]", p.Forget)
				}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tc.check(t, PlanUnauthorized(tc.uses, tc.policy, []string{"gpu-operator"}, tc.reported, tc.parked))
		})
	}
}

// TestPlanDriverLimits: the driver tier's limits from a snapshot, without
// a driver: a container's own cgroup gets its limit; a container held at
// its pod's level, one without a cgroup v2 path and one without a limit
// get none.
func TestPlanDriverLimits(t *testing.T) {
	t.Parallel()
	own := node.Cgroup{PodUID: "u1", ContainerID: "c1", Paths: map[string]string{"": "/kubepods/podu1/c1", "memory": "/kubepods/podu1/c1"}}
	pod := node.Cgroup{PodUID: "u2", Paths: map[string]string{"": "/kubepods/podu2"}}
	v1 := node.Cgroup{PodUID: "u3", ContainerID: "c3", Paths: map[string]string{"memory": "/kubepods/podu3/c3"}}
	snap := &node.Snapshot{Containers: []node.Container{
		{Namespace: "ml", Pod: "a", Container: "main", PodUID: "u1", UUID: "GPU-1", MemoryLimitBytes: 8 << 30, Cgroup: own},
		{Namespace: "ml", Pod: "b", Container: "main", PodUID: "u2", UUID: "GPU-1", MemoryLimitBytes: 8 << 30, Cgroup: pod},
		{Namespace: "ml", Pod: "c", Container: "main", PodUID: "u3", UUID: "GPU-1", MemoryLimitBytes: 8 << 30, Cgroup: v1},
		{Namespace: "ml", Pod: "a", Container: "side", PodUID: "u1", UUID: "GPU-2", Cgroup: own},
	}}
	want := []DriverLimit{{Dir: "/sys/fs/cgroup/kubepods/podu1/c1", ContainerID: "c1", UUID: "GPU-1", Bytes: 8 << 30,
		Pod: events.Pod{Namespace: "ml", Name: "a", UID: "u1"}, Container: "main"}}
	if diff := cmp.Diff(want, PlanDriverLimits(snap, "/sys/fs/cgroup")); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
}

// TestWatchdogTwoGPUsEscalateApart is an attack: a container holding
// slices of two GPUs starts a new process over its limit on one GPU every
// round, while it stays within on the other. Each GPU's limit is held
// apart: being within on one GPU must not reset the other's overrun, or
// the container never has its cgroup killed and is never more than one
// "new" overrun away from running past its limit for good.
func TestWatchdogTwoGPUsEscalateApart(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	procRoot := t.TempDir()
	cg := node.Cgroup{PodUID: "11111111-2222-3333-4444-555555555555", ContainerID: strings.Repeat("c", 64)}
	cg.Paths = map[string]string{"": "/kubepods/pod" + cg.PodUID + "/" + cg.ContainerID}
	for _, pid := range []int{10, 11, 12} {
		dir := filepath.Join(procRoot, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::"+cg.Paths[""]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	w := NewWatchdog(MemoryKill, procRoot, slog.New(slog.DiscardHandler), nil)
	var killed []int
	cgroupKills := 0
	w.kill = func(pid int) error { killed = append(killed, pid); return nil }
	w.killCgroup = func(node.Cgroup) error { cgroupKills++; return nil }
	round := func(onA nvml.Process) *node.Snapshot {
		return &node.Snapshot{Containers: []node.Container{
			{Namespace: "ml", Pod: "p", Container: "c", UUID: "GPU-a", MemoryLimitBytes: 500 * mib, Cgroup: cg, Procs: []nvml.Process{onA}},
			{Namespace: "ml", Pod: "p", Container: "c", UUID: "GPU-b", Index: 1, MemoryLimitBytes: 500 * mib, Cgroup: cg, Procs: []nvml.Process{{PID: 11, MemoryBytes: 100 * mib}}},
		}}
	}
	w.Apply(round(nvml.Process{PID: 10, MemoryBytes: 600 * mib}))
	if !cmp.Equal(killed, []int{10}) || cgroupKills != 0 {
		t.Fatalf("first overrun on GPU a: killed %v, cgroup kills %d; want its process killed", killed, cgroupKills)
	}
	w.Apply(round(nvml.Process{PID: 12, MemoryBytes: 600 * mib})) // a new process, over again
	if cgroupKills != 1 {
		t.Errorf("over again on GPU a after its process was killed: cgroup kills %d, killed %v; want its cgroup killed", cgroupKills, killed)
	}
	if st := w.Stats()[cg.Key()]; st.Events != 1 || st.Kills != 1 || st.CgroupKills != 1 {
		t.Errorf("stats %+v; want one overrun, one kill, one cgroup kill, summed over its GPUs", st)
	}
}
