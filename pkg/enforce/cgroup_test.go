package enforce

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
)

const cgroupRoot = "/sys/fs/cgroup"

var (
	buildOnce   sync.Once
	workloadBin string
	buildErr    error
	seq         atomic.Int64
)

// testCgroup creates a cgroup of the test's own in the v2 hierarchy (kind
// "") or the v1 freezer hierarchy (kind "freezer") and removes it at the
// end. It returns the path relative to the hierarchy and the directory.
func testCgroup(t *testing.T, kind string) (string, string) {
	t.Helper()
	mount := filepath.Join(cgroupRoot, "unified")
	if kind == "freezer" {
		mount = filepath.Join(cgroupRoot, "freezer")
	}
	rel := fmt.Sprintf("/gpuslice-enforce-test-%d-%d", os.Getpid(), seq.Add(1))
	dir := filepath.Join(mount, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		cgrouptest.Skip(t, "cannot create a cgroup in %s (the host lacks it or denies it): %v", mount, err)
	}
	t.Cleanup(func() {
		// Thaw first: a frozen cgroup's processes cannot exit.
		_ = Freezer{File: freezerFile(kind, dir)}.Thaw()
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return rel, dir
}

func freezerFile(kind, dir string) string {
	if kind == "freezer" {
		return filepath.Join(dir, "freezer.state")
	}
	return filepath.Join(dir, "cgroup.freeze")
}

// workload starts a fake GPU workload wanting the whole GPU inside the
// cgroup dir and returns a function reading the GPU time it has asked for.
func workload(t *testing.T, dir string) (*exec.Cmd, func() time.Duration) {
	t.Helper()
	buildOnce.Do(func() {
		var d string
		if d, buildErr = os.MkdirTemp("", "enforce-test"); buildErr == nil {
			workloadBin, buildErr = fakegpu.BuildWorkload(d)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	work := t.TempDir()
	cmd := exec.Command(workloadBin, "--dir", work, "--gpu", "GPU-test", "--demand", "1", "--tick", "5ms")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		t.Fatalf("move workload into %s: %v", dir, err)
	}
	state := filepath.Join(work, strconv.Itoa(cmd.Process.Pid)+".json")
	asked := func() time.Duration {
		for range 100 {
			data, err := os.ReadFile(state)
			var s fakegpu.WorkloadState
			if err == nil && json.Unmarshal(data, &s) == nil {
				return time.Duration(s.RequestedNanos)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatal("workload never published its state")
		return 0
	}
	return cmd, asked
}

// runningProgress is the least a running workload makes in 300 ms, far
// above the 10 ms a frozen one may: with two busy loops and the other
// tests on two cores it gets a third of a core at worst, and 150 ms (the
// bar this once was) failed 1 run in 25 at 149 ms.
const runningProgress = 60 * time.Millisecond

// progress returns how much GPU time the workload asked for over d.
func progress(asked func() time.Duration, d time.Duration) time.Duration {
	before := asked()
	time.Sleep(d)
	return asked() - before
}

func TestFreezeStopsProgress(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"", "freezer"} {
		name := "v2"
		if kind == "freezer" {
			name = "v1 freezer"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rel, dir := testCgroup(t, kind)
			_, asked := workload(t, dir)
			f, err := FreezerFor(cgroupRoot, node.Cgroup{ContainerID: "c", Paths: map[string]string{kind: rel}})
			if err != nil {
				t.Fatal(err)
			}
			if got := progress(asked, 300*time.Millisecond); got < runningProgress {
				t.Fatalf("running workload made %v of progress in 300ms", got)
			}
			if err := f.Freeze(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			if frozen, err := f.Frozen(); err != nil || !frozen {
				t.Fatalf("Frozen() = %v, %v after Freeze", frozen, err)
			}
			if got := progress(asked, 300*time.Millisecond); got > 10*time.Millisecond {
				t.Errorf("frozen workload made %v of progress in 300ms", got)
			}
			if err := f.Thaw(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			if frozen, _ := f.Frozen(); frozen {
				t.Error("Frozen() = true after Thaw")
			}
			if got := progress(asked, 300*time.Millisecond); got < runningProgress {
				t.Errorf("thawed workload made only %v of progress in 300ms", got)
			}
		})
	}
}

func TestThrottleHoldsDuty(t *testing.T) {
	t.Parallel()
	rel, dir := testCgroup(t, "")
	_, asked := workload(t, dir)
	f, err := FreezerFor(cgroupRoot, node.Cgroup{ContainerID: "c", Paths: map[string]string{"": rel}})
	if err != nil {
		t.Fatal(err)
	}
	th := StartThrottle(f, Plan{Duty: 0.3, Period: 100 * time.Millisecond}, time.Now(), nil)
	time.Sleep(200 * time.Millisecond)
	// A loaded machine can only slow the workload further, so only the
	// upper bound is an outcome of the throttle; the edges themselves are
	// timed exactly in TestThrottleFollowsPlan.
	got := progress(asked, 2*time.Second)
	if share := got.Seconds() / 2; share > 0.45 {
		t.Errorf("workload at duty 0.3 ran %.2f of the time", share)
	}
	if th.Throttled() < 500*time.Millisecond {
		t.Errorf("Throttled() = %v after 2.2s at duty 0.3", th.Throttled())
	}
	th.Stop()
	if frozen, _ := f.Frozen(); frozen {
		t.Error("container left frozen after Stop")
	}
	if got := progress(asked, 300*time.Millisecond); got < runningProgress {
		t.Errorf("workload after Stop made only %v in 300ms", got)
	}
}

func TestThrottleCgroupVanishes(t *testing.T) {
	t.Parallel()
	rel, dir := testCgroup(t, "")
	cmd, _ := workload(t, dir)
	f, err := FreezerFor(cgroupRoot, node.Cgroup{ContainerID: "c", Paths: map[string]string{"": rel}})
	if err != nil {
		t.Fatal(err)
	}
	th := StartThrottle(f, Plan{Duty: 0.5, Period: 20 * time.Millisecond}, time.Now(), nil)
	time.Sleep(100 * time.Millisecond)
	// The container goes away mid-throttle: its process is killed (fatal
	// signals reach frozen tasks) and the runtime removes its cgroup.
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for os.Remove(dir) != nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-th.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("throttle still running on a vanished cgroup")
	}
	if !errors.Is(th.Err(), os.ErrNotExist) {
		t.Errorf("Err() = %v, want a not-exist error", th.Err())
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the throttle recreated %s: %v", dir, err)
	}
}

func TestStateFileThawsWhatACrashLeftFrozen(t *testing.T) {
	t.Parallel()
	rel, dir := testCgroup(t, "")
	_, asked := workload(t, dir)
	f, _ := FreezerFor(cgroupRoot, node.Cgroup{ContainerID: "c", Paths: map[string]string{"": rel}})
	state := StateFile{Path: filepath.Join(t.TempDir(), "state", "enforcement.json")}
	if err := state.Write([]string{f.File, "/sys/fs/cgroup/unified/gone-long-ago/cgroup.freeze"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Freeze(); err != nil { // the "crashed agent" froze it last
		t.Fatal(err)
	}
	n, err := state.ThawRecorded(cgroupRoot, nil)
	if err != nil || n != 1 {
		t.Fatalf("ThawRecorded() = %d, %v; want 1 thawed and the vanished one skipped", n, err)
	}
	if got := progress(asked, 300*time.Millisecond); got < runningProgress {
		t.Errorf("workload still stopped after the thaw: %v in 300ms", got)
	}
	if n, err := state.ThawRecorded(cgroupRoot, nil); n != 0 || err != nil {
		t.Errorf("second ThawRecorded() = %d, %v; the record should be empty", n, err)
	}
	if err := os.WriteFile(state.Path, []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := state.ThawRecorded(cgroupRoot, nil); err == nil {
		t.Error("a corrupt record was accepted")
	}
	if _, err := os.Stat(state.Path); !errors.Is(err, os.ErrNotExist) {
		t.Error("a corrupt record was kept")
	}
	if n, err := (StateFile{Path: filepath.Join(t.TempDir(), "none.json")}).ThawRecorded(cgroupRoot, nil); n != 0 || err != nil {
		t.Errorf("missing record = %d, %v", n, err)
	}
}

func TestFreezerForNoCgroup(t *testing.T) {
	t.Parallel()
	_, err := FreezerFor(cgroupRoot, node.Cgroup{ContainerID: "c", Paths: map[string]string{"": "/no/such/cgroup", "freezer": "/no/such"}})
	if !errors.Is(err, ErrNoFreezer) {
		t.Errorf("FreezerFor() = %v, want ErrNoFreezer", err)
	}
	if err := (Freezer{File: "/sys/fs/cgroup/unified/no-such/cgroup.freeze"}).Freeze(); err == nil {
		t.Error("Freeze() of a missing cgroup succeeded")
	}
}

func TestUnreachableContainerCountedOnce(t *testing.T) {
	t.Parallel()
	o := DefaultOptions()
	o.CgroupRoot = t.TempDir()
	o.State = StateFile{Path: filepath.Join(t.TempDir(), "e.json")}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	snap := &node.Snapshot{Containers: []node.Container{{
		Namespace: "ml", Pod: "p", Container: "c", UUID: "GPU-x", ComputeLimitRatio: 0.3, SMUtilization: 0.9,
		Cgroup: node.Cgroup{ContainerID: "x", Paths: map[string]string{"": "/no/such/cgroup"}},
	}}}
	for range 3 {
		e.Apply(snap)
	}
	if n := e.Failures(); n != 1 {
		t.Errorf("Failures() = %d after three samples of one unreachable container, want 1", n)
	}
	if st := e.Stats()["x"]; st.Compute != ReasonNoFreezer || st.Memory != ReasonEnforced || st.Duty != 1 {
		t.Errorf("stats = %+v, want compute not held (no freezer) at duty 1, memory held", st)
	}
	e.Apply(&node.Snapshot{}) // gone
	e.Apply(snap)             // back: a new episode, counted again
	if n := e.Failures(); n != 2 {
		t.Errorf("Failures() = %d after the container came back, want 2", n)
	}
}

// eventLog is a Recorder that keeps what it is given.
type eventLog struct {
	mu   sync.Mutex
	list []string // "<type> <namespace>/<pod> <reason>: <message>"
}

func (l *eventLog) Normal(p events.Pod, reason, msg string)  { l.add("Normal", p, reason, msg) }
func (l *eventLog) Warning(p events.Pod, reason, msg string) { l.add("Warning", p, reason, msg) }
func (l *eventLog) add(typ string, p events.Pod, reason, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.list = append(l.list, typ+" "+p.Namespace+"/"+p.Name+" "+reason+": "+msg)
}

// TestUnenforceableContainerIsReported: a container whose cgroup cannot
// be reached is reported per container, with the reason (its cgroup path
// relative to an unresolved namespace, or no freezer where it points), in
// its stats and in one Warning Event on its pod, and the node's compute
// tier reads unavailable where no freezer exists at all.
func TestUnenforceableContainerIsReported(t *testing.T) {
	t.Parallel()
	log := &eventLog{}
	o := DefaultOptions()
	o.CgroupRoot = t.TempDir() // no freezer anywhere
	o.State = StateFile{Path: filepath.Join(t.TempDir(), "e.json")}
	o.Events = log
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	snap := &node.Snapshot{Containers: []node.Container{
		{Namespace: "ml", Pod: "p", Container: "c", UUID: "GPU-x", ComputeLimitRatio: 0.3, SMUtilization: 0.9,
			Cgroup: node.Cgroup{ContainerID: "x", Paths: map[string]string{"": "/no/such/cgroup"}}},
		{Namespace: "ml", Pod: "q", Container: "c", UUID: "GPU-x", ComputeLimitRatio: 0.3, SMUtilization: 0.9,
			Cgroup: node.Cgroup{ContainerID: "y", Paths: map[string]string{}, Unresolved: "relative to an unresolved cgroup namespace"}},
	}}
	for range 3 {
		e.Apply(snap)
	}
	stats := e.Stats()
	if st := stats["x"]; st.Compute != ReasonNoFreezer || st.Memory != ReasonEnforced {
		t.Errorf("x: %+v, want compute no-freezer, memory enforced", st)
	}
	if st := stats["y"]; st.Compute != ReasonCgroupUnresolved || st.Memory != ReasonEnforced {
		t.Errorf("y: %+v, want compute cgroup-unresolved, memory enforced", st)
	}
	log.mu.Lock()
	got := append([]string(nil), log.list...)
	log.mu.Unlock()
	slices.Sort(got)
	if len(got) != 2 || !strings.HasPrefix(got[0], "Warning ml/p GPUComputeShareUnenforced: The 30% compute share of container c on GPU 0 cannot be enforced (no-freezer)") ||
		!strings.HasPrefix(got[1], "Warning ml/q GPUComputeShareUnenforced: The 30% compute share of container c on GPU 0 cannot be enforced (cgroup-unresolved): relative to an unresolved cgroup namespace") {
		t.Errorf("events = %q; want one Warning per container, with its reason", got)
	}
	if n := e.Node(); n.Compute != ReasonNoFreezer || n.Memory != ReasonEnforced {
		t.Errorf("node = %+v; want compute no-freezer (no freezer under the cgroup root), memory enforced", n)
	}
}

// TestCheckNode: what each tier needs of the node.
func TestCheckNode(t *testing.T) {
	t.Parallel()
	host := DefaultOptions() // this host: v1 freezer and v2 at unified
	if !freezerOnHost(host.CgroupRoot) {
		cgrouptest.Skip(t, "no freezer under %s", host.CgroupRoot)
	}
	off := host
	off.Compute, off.Memory = false, MemoryLog
	mps := host
	mps.MPS, mps.Memory = true, MemoryOff
	none := host
	none.CgroupRoot = t.TempDir()
	for name, tc := range map[string]struct {
		o     Options
		nsErr error
		want  NodeState
	}{
		"this host":                   {o: host, want: NodeState{ReasonEnforced, ReasonEnforced}},
		"turned off, memory only log": {o: off, want: NodeState{ReasonDisabled, ReasonReportOnly}},
		"mps holds compute":           {o: mps, want: NodeState{ReasonEnforced, ReasonDisabled}},
		"no freezer":                  {o: none, want: NodeState{ReasonNoFreezer, ReasonEnforced}},
		"namespace not placed":        {o: host, nsErr: errors.New("no cgroup lists the agent"), want: NodeState{ReasonCgroupUnresolved, ReasonEnforced}},
	} {
		got := CheckNode(tc.o, tc.nsErr)
		if got != tc.want {
			t.Errorf("%s: CheckNode = %+v, want %+v", name, got, tc.want)
		}
		// Only what cannot engage is a failure; a tier turned off is not.
		failing := tc.want.Compute == ReasonNoFreezer || tc.want.Compute == ReasonCgroupUnresolved
		if why := got.CannotEngage(); (why != "") != failing {
			t.Errorf("%s: CannotEngage = %q", name, why)
		}
	}
}

// TestStateFileTrustsNothing is the hostile record: the root agent must
// write THAWED or 0 into nothing but a freezer file of a cgroup under the
// cgroup root.
func TestStateFileTrustsNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	victim := filepath.Join(dir, "freezer.state") // named like one, not on cgroupfs
	other := filepath.Join(dir, "passwd")
	for _, f := range []string{victim, other} {
		if err := os.WriteFile(f, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(cgroupRoot, "unified", fmt.Sprintf("gpuslice-link-%d", os.Getpid()))
	state := StateFile{Path: filepath.Join(dir, "enforcement.json")}
	if err := state.Write([]string{victim, other, "/sys/fs/cgroup/unified/../../../etc/cgroup.freeze", link + "/cgroup.freeze", "relative/cgroup.freeze"}); err != nil {
		t.Fatal(err)
	}
	if n, err := state.ThawRecorded(cgroupRoot, nil); n != 0 || err != nil {
		t.Errorf("ThawRecorded() = %d, %v; want nothing thawed, no error", n, err)
	}
	for _, f := range []string{victim, other} {
		if data, _ := os.ReadFile(f); string(data) != "precious" {
			t.Errorf("%s was written: %q", f, data)
		}
	}
	for _, f := range []string{victim, "/etc/cgroup.freeze", "/sys/fs/cgroup/unified/x/../cgroup.freeze"} {
		if err := checkFreezerFile(cgroupRoot, f); err == nil {
			t.Errorf("checkFreezerFile(%q) accepted it", f)
		}
	}
}

// TestThawPodCgroupsAtStart: with no record at all (torn, or a full disk
// kept it from being written), a new agent thaws frozen pod and container
// cgroups, and leaves a tenant's own frozen subtree alone.
func TestThawPodCgroupsAtStart(t *testing.T) {
	t.Parallel()
	_, top := testCgroup(t, "")
	ctr := filepath.Join(top, "kubepods", "burstable", "pod1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d", strings.Repeat("e", 64))
	own := filepath.Join(ctr, "tenant-frozen")
	if err := os.MkdirAll(own, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for p := own; p != top; p = filepath.Dir(p) {
			_ = Freezer{File: filepath.Join(p, "cgroup.freeze")}.Thaw()
			_ = os.Remove(p)
		}
	})
	for _, d := range []string{ctr, own} {
		if err := (Freezer{File: filepath.Join(d, "cgroup.freeze")}).Freeze(); err != nil {
			t.Fatal(err)
		}
	}
	o := DefaultOptions()
	o.CgroupRoot = cgroupRoot
	o.State = StateFile{Path: filepath.Join(t.TempDir(), "none.json")}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if v, _ := os.ReadFile(filepath.Join(ctr, "cgroup.freeze")); strings.TrimSpace(string(v)) != "0" {
		t.Errorf("the container's cgroup is still frozen: %q", v)
	}
	if v, _ := os.ReadFile(filepath.Join(own, "cgroup.freeze")); strings.TrimSpace(string(v)) != "1" {
		t.Errorf("the tenant's own frozen subtree was thawed: %q", v)
	}
}

// TestStartupThawLeavesOthersFreezes: the defect from the review. With no
// record (a full disk, then SIGKILL), the start-up thaw thawed every frozen
// pod cgroup on the node, whoever froze it: a paused container, a
// checkpoint in progress, another controller. Now a freeze of the agent's
// own carries a mark on the cgroup itself (an extended attribute: no disk
// space), and only marked cgroups are thawed, on cgroup v2 and the v1
// freezer alike; one whose mark names an agent process still alive is
// that agent's to thaw.
func TestStartupThawLeavesOthersFreezes(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"", "freezer"} {
		t.Run("hierarchy "+kind, func(t *testing.T) {
			t.Parallel()
			_, top := testCgroup(t, kind)
			pod := filepath.Join(top, "kubepods", "burstable", "pod1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d")
			ours, theirs := filepath.Join(pod, strings.Repeat("a", 64)), filepath.Join(pod, strings.Repeat("b", 64))
			live := filepath.Join(pod, strings.Repeat("c", 64)) // frozen by an agent still running
			for _, d := range []string{ours, theirs, live} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			t.Cleanup(func() {
				for _, d := range []string{ours, theirs, live, pod, filepath.Dir(pod), filepath.Dir(filepath.Dir(pod))} {
					_ = Freezer{File: freezerFile(kind, d)}.Thaw()
					_ = os.Remove(d)
				}
			})
			// Ours: marked by an agent that is gone (a PID no process has).
			if err := (Freezer{File: freezerFile(kind, ours), Owner: "2147483647/1"}).Freeze(); err != nil {
				t.Fatal(err)
			}
			self, err := OwnerOf("/proc", os.Getpid())
			if err != nil {
				t.Fatal(err)
			}
			if err := (Freezer{File: freezerFile(kind, live), Owner: self}).Freeze(); err != nil {
				t.Fatal(err)
			}
			// Paused by someone else: the control file written directly.
			frozen := "1"
			if kind == "freezer" {
				frozen = "FROZEN"
			}
			if err := os.WriteFile(freezerFile(kind, theirs), []byte(frozen), 0o600); err != nil {
				t.Fatal(err)
			}
			o := DefaultOptions()
			o.CgroupRoot = cgroupRoot
			o.State = StateFile{Path: filepath.Join(t.TempDir(), "none.json")}
			e, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if f, _ := (Freezer{File: freezerFile(kind, ours)}).Frozen(); f {
				t.Error("the cgroup the agent froze is still frozen after the start-up thaw")
			}
			if f, _ := (Freezer{File: freezerFile(kind, theirs)}).Frozen(); !f {
				t.Error("a cgroup someone else froze was thawed at start")
			}
			if marked(ours) {
				t.Error("the thawed cgroup still carries the agent's mark")
			}
			if f, _ := (Freezer{File: freezerFile(kind, live)}).Frozen(); !f {
				t.Error("a freeze of an agent still running was thawed by another's start")
			}
		})
	}
}

// marked reports whether the cgroup dir carries gpuslice's freeze mark.
func marked(dir string) bool { return Freezer{File: filepath.Join(dir, "cgroup.freeze")}.Marked() }
