package enforce_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/sampler"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// attackNode is a fake node with one H100 cut into 10 slices, pods as real
// cgroup v2 trees shaped as the kubelet and containerd make them, the
// runtime's bundles in a state dir, and the real sampler feeding the real
// enforcer. Tenants' processes are real fake-GPU workloads.
type attackNode struct {
	node                           *kubeletstub.Node
	work, bin, base, runtime, root string
	smp                            *sampler.Sampler
	enf                            *enforce.Enforcer
}

func startAttackNode(t *testing.T, configure func(*enforce.Options)) *attackNode {
	t.Helper()
	return startAttackNodeDRA(t, configure, "")
}

// startAttackNodeDRA is startAttackNode with the agent's DRA mode on when
// kubeletDir is set: the DRA driver's record is read at
// kubeletDir/dra-prepared.json, and the pods' UIDs are those the stand-in
// kubelet's pods would have in the API server.
func startAttackNodeDRA(t *testing.T, configure func(*enforce.Options), kubeletDir string) *attackNode {
	t.Helper()
	work := t.TempDir()
	node := kubeletstub.StartNode(t, fakegpu.Config{Preset: "H100-80GB", Count: 1, WorkloadDir: work}, 10)
	bin, err := fakegpu.BuildWorkload(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("/sys/fs/cgroup/unified/gpuslice-attack-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	if err := os.Mkdir(base, 0o755); err != nil {
		cgrouptest.Skip(t, "cannot create cgroups under /sys/fs/cgroup/unified: %v", err)
	}
	t.Cleanup(func() { removeTree(t, base) })
	n := &attackNode{node: node, work: work, bin: bin, base: base, runtime: t.TempDir(), root: "/sys/fs/cgroup"}

	o := podresources.DefaultOptions()
	o.Socket = node.PodResourcesSocket
	if kubeletDir != "" {
		o.DRADriver = contract.DRADriverName
	}
	client, err := podresources.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	eo := enforce.DefaultOptions()
	eo.Policy = enforce.Strict
	eo.State = enforce.StateFile{Path: filepath.Join(t.TempDir(), "enforcement.json")}
	if configure != nil {
		configure(&eo)
	}
	if n.enf, err = enforce.New(eo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.enf.Close) // runs before the cgroups are removed
	so := sampler.DefaultOptions()
	so.Interval = 250 * time.Millisecond
	so.PluginDir = node.Dir
	so.Names = host.NewRuntimeState([]string{n.runtime})
	so.OnSample = n.enf.Apply
	if kubeletDir != "" {
		so.DRA, so.PreparedClaims, so.Pods = true, filepath.Join(kubeletDir, "dra-prepared.json"), node.PodResources
	}
	if n.smp, err = sampler.New(node.Devices, node.Layout, node.GPU, client, node.Health, so); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = n.smp.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return n
}

// cid is a container's runtime ID, derived from its pod and name.
func cid(pod, name string) string { return kubeletstub.ContainerID(pod, name) }

// podDir is pod's cgroup.
func (n *attackNode) podDir(pod string) string {
	return filepath.Join(n.base, "kubepods", "burstable", "pod"+kubeletstub.PodUID(pod))
}

// container allocates slices to a container of pod (none when 0), records
// it as containerd does and creates its cgroup; it returns the cgroup.
func (n *attackNode) container(t *testing.T, pod, name string, slices int) string {
	t.Helper()
	if slices > 0 {
		if _, err := n.node.Connection.Allocate(context.Background(), pod, name, slices); err != nil {
			t.Fatal(err)
		}
	}
	id, err := kubeletstub.WriteContainerdBundle(n.runtime, pod, name)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(n.podDir(pod), id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// run starts a workload in the cgroup dir (moved there before it touches
// the GPU, as a runtime does) with demand and mib of GPU memory.
func (n *attackNode) run(t *testing.T, dir string, demand float64, mib int) *cgrouptest.Workload {
	t.Helper()
	cmd := cgrouptest.InCgroup(dir, n.bin, "--dir", n.work, "--gpu", n.node.Devices[0].UUID,
		"--demand", strconv.FormatFloat(demand, 'f', -1, 64), "--memory-mib", strconv.Itoa(mib), "--tick", "5ms")
	return cgrouptest.StartWorkload(t, cmd, n.work, dir)
}

// waitFor samples until cond holds on a snapshot.
func (n *attackNode) waitFor(t *testing.T, what string, cond func(*node.Snapshot) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond(n.smp.Snapshot()) {
		if time.Now().After(deadline) {
			t.Fatalf("never saw %s: %+v", what, n.smp.Snapshot())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func processesOf(s *node.Snapshot, pod, container string) int {
	for _, c := range s.Containers {
		if c.Pod == pod && c.Container == container {
			return c.Processes
		}
	}
	return -1
}

// Attack 1: two GPU containers of one pod on one GPU, with no env to tell
// them apart. Each process is its own container's; the one over its
// memory limit is killed, the other is left alone.
func TestAttackTwoGPUContainersInOnePod(t *testing.T) {
	t.Parallel()
	n := startAttackNode(t, nil)
	a := n.container(t, "ml/two", "a", 2) // 16 GiB
	b := n.container(t, "ml/two", "b", 3)
	inB := n.run(t, b, 0.05, 1024)
	n.waitFor(t, "b's process attributed to b", func(s *node.Snapshot) bool { return processesOf(s, "two", "b") == 1 })
	hog := n.run(t, a, 0.05, 20<<10) // 20 GiB in a 16 GiB container
	if !hog.Exited(20 * time.Second) {
		t.Fatalf("a's process over a's limit was never killed: %+v", n.smp.Snapshot().Containers)
	}
	if inB.Exited(time.Second) {
		t.Error("b's process within b's limit was killed")
	}
}

// Attack 2: a process outside every pod uses the GPU. It is charged to no
// one and never acted on; the tenant next to it is not blamed.
func TestAttackHostProcessIsNeverCharged(t *testing.T) {
	t.Parallel()
	n := startAttackNode(t, nil)
	victim := n.container(t, "ml/victim", "main", 3)
	n.run(t, victim, 0.1, 1024)
	host := filepath.Join(n.base, "host.slice")
	if err := os.Mkdir(host, 0o755); err != nil {
		t.Fatal(err)
	}
	forger := n.run(t, host, 1, 70<<10) // greedy, far over any slice
	n.waitFor(t, "the host process unattributed", func(s *node.Snapshot) bool {
		for _, u := range s.Unattributed {
			if u.PID == forger.Cmd.Process.Pid && strings.Contains(u.Reason, "not in a pod") {
				return true
			}
		}
		return false
	})
	s := n.smp.Snapshot()
	if got := processesOf(s, "victim", "main"); got != 1 {
		t.Errorf("victim charged with %d processes, want its own 1", got)
	}
	if len(s.Unauthorized) != 0 {
		t.Errorf("a host process judged unauthorized: %+v", s.Unauthorized)
	}
	if forger.Exited(time.Second) {
		t.Error("a host process was killed")
	}
}

// Attack 3: a tenant names a child of its own container's cgroup after a
// victim pod and container. Its use stays its own: it is killed over its
// own limit, and the victim's process within its limit is untouched.
func TestAttackNestedCgroupNamedAfterVictim(t *testing.T) {
	t.Parallel()
	n := startAttackNode(t, nil)
	victim := n.container(t, "ml/victim", "main", 3)
	inVictim := n.run(t, victim, 0.05, 20<<10) // 20 of the victim's 24 GiB
	attacker := n.container(t, "ml/attacker", "main", 1)
	fake := filepath.Join(attacker, "pod"+kubeletstub.PodUID("ml/victim"), cid("ml/victim", "main"))
	if err := os.MkdirAll(fake, 0o755); err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, "the victim's process", func(s *node.Snapshot) bool { return processesOf(s, "victim", "main") == 1 })
	hog := n.run(t, fake, 0.05, 12<<10) // 12 GiB: over the attacker's 8, within the victim's remaining room
	if !hog.Exited(20 * time.Second) {
		t.Fatalf("the attacker's process was never killed: %+v", n.smp.Snapshot().Containers)
	}
	if inVictim.Exited(time.Second) {
		t.Error("the victim's process within its limit was killed")
	}
}

// Attack 4: a process moves to a child cgroup of its container, or up to
// its pod's cgroup. Either way the throttle still holds it, judged by the
// work the process itself reports doing.
func TestAttackEscapeToChildOrPodCgroup(t *testing.T) {
	t.Parallel()
	for _, where := range []string{"child", "pod"} {
		t.Run(where, func(t *testing.T) {
			t.Parallel()
			n := startAttackNode(t, nil)
			dir := n.container(t, "ml/escape", "main", 2) // strict 20 %
			if where == "child" {
				dir = filepath.Join(dir, "escaped")
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			} else {
				dir = n.podDir("ml/escape")
			}
			w := n.run(t, dir, 1, 1024)
			n.waitFor(t, "the escaped process attributed", func(s *node.Snapshot) bool { return processesOf(s, "escape", "main") == 1 })
			// Unthrottled it would run all the time; held, about a fifth.
			time.Sleep(3 * time.Second)
			if got := w.Share(t, 4*time.Second); got > 0.45 {
				t.Errorf("escaped to the %s cgroup, the process ran %.2f of the time; want about 0.20", where, got)
			}
		})
	}
}

// Attack 6b: a process seen in its container moves up to its pod's cgroup
// (which needs write access no unprivileged container has). The sampler
// remembers a process's cgroups (followed by pidfd), but reads them again
// within its recheck period, so the move is seen and the pod's cgroup is
// what enforcement then holds.
func TestAttackMoveAfterBeingSeen(t *testing.T) {
	t.Parallel()
	n := startAttackNode(t, nil)
	dir := n.container(t, "ml/mover", "main", 2)
	w := n.run(t, dir, 1, 1024)
	cgroupOf := func(s *node.Snapshot) node.Cgroup {
		for _, c := range s.Containers {
			if c.Pod == "mover" && c.Processes == 1 {
				return c.Cgroup
			}
		}
		return node.Cgroup{}
	}
	n.waitFor(t, "the process in its container's cgroup", func(s *node.Snapshot) bool {
		c := cgroupOf(s)
		return c.ContainerID != "" && !c.PodLevel()
	})
	pid := strconv.Itoa(w.Cmd.Process.Pid)
	if err := os.WriteFile(filepath.Join(n.podDir("ml/mover"), "cgroup.procs"), []byte(pid), 0o600); err != nil {
		t.Fatal(err)
	}
	moved := time.Now()
	n.waitFor(t, "the move to the pod's cgroup", func(s *node.Snapshot) bool { return cgroupOf(s).PodLevel() })
	if took := time.Since(moved); took > sampler.DefaultOptions().CgroupRecheck+5*time.Second {
		t.Errorf("the move was seen after %s, want within the recheck period", took)
	}
}

// Attack 7: containers that hold no slice of the GPU reach it anyway (a
// privileged pod, NVIDIA_VISIBLE_DEVICES in the image). Killed by default;
// frozen under the freeze policy, and thawed when the agent stops.
func TestAttackGPUUseWithoutSlices(t *testing.T) {
	t.Parallel()
	t.Run("kill", func(t *testing.T) {
		t.Parallel()
		n := startAttackNode(t, nil)
		gpuCtr := n.container(t, "ml/mixed", "gpu", 2)
		legit := n.run(t, gpuCtr, 0.05, 1024)
		sidecar := n.run(t, n.container(t, "ml/mixed", "sidecar", 0), 0.5, 1024)
		stranger := n.run(t, n.container(t, "ml/noslices", "main", 0), 0.5, 1024)
		if !sidecar.Exited(20*time.Second) || !stranger.Exited(5*time.Second) {
			t.Fatalf("unauthorized GPU use not killed: %+v", n.smp.Snapshot().Unauthorized)
		}
		if legit.Exited(time.Second) {
			t.Error("the container holding slices was killed")
		}
		if st := n.enf.UnauthorizedStats(); st.Killed < 2 {
			t.Errorf("stats %+v, want two kills", st)
		}
	})
	t.Run("freeze", func(t *testing.T) {
		t.Parallel()
		n := startAttackNode(t, func(o *enforce.Options) { o.Unauthorized = enforce.UnauthorizedFreeze })
		n.container(t, "ml/other", "gpu", 2) // a checkpoint exists
		dir := n.container(t, "ml/noslices", "main", 0)
		w := n.run(t, dir, 0.5, 1024)
		n.waitFor(t, "the cgroup frozen", func(*node.Snapshot) bool { return n.enf.UnauthorizedStats().Frozen == 1 })
		time.Sleep(500 * time.Millisecond)
		// Frozen it runs not at all, free it runs about half the time; the
		// bound leaves room for another test's agent starting in parallel,
		// whose start-up thaw lets it run until the next sample re-freezes.
		if got := w.Share(t, 2*time.Second); got > 0.2 {
			t.Errorf("frozen for unauthorized use, the process still ran %.2f of the time", got)
		}
		n.enf.Close()
		if got := w.Share(t, 2*time.Second); got < 0.2 {
			t.Errorf("after Close the process ran %.2f of the time: still frozen", got)
		}
	})
}

// Attack 8: NVML cannot list the GPU's processes. The throttle holds the
// duty it had rather than letting go, and no use is reported as zero.
func TestBlindAgentHoldsThrottle(t *testing.T) {
	t.Parallel()
	n := startAttackNode(t, nil)
	dir := n.container(t, "ml/greedy", "main", 2)
	w := n.run(t, dir, 1, 1024)
	n.waitFor(t, "the container throttled", func(*node.Snapshot) bool {
		st := n.enf.Stats()[cid("ml/greedy", "main")]
		return st.Compute == enforce.ReasonEnforced && st.Duty < 0.5
	})
	if err := n.node.GPU.FailCall(fakegpu.CallProcesses, true); err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, "the container blind", func(s *node.Snapshot) bool { return len(s.Containers) == 1 && s.Containers[0].Blind })
	time.Sleep(time.Second)
	if got := w.Share(t, 3*time.Second); got > 0.45 {
		t.Errorf("while the agent was blind the process ran %.2f of the time: the throttle let go", got)
	}
	if st := n.enf.Stats()[cid("ml/greedy", "main")]; st.Duty >= 0.5 {
		t.Errorf("duty %.2f while blind, want the held one", st.Duty)
	}
}

// Attack 5: work switched on and off around the sample interval to win
// back full duty while idle. Over 20 s of 1 s on / 1 s off, a strict 20 %
// container gets no more than its 20 % (judged by the work it reports,
// with room for a loaded machine only above, where it cannot hide a win:
// the attack took 0.33 before strict kept a window).
func TestAttackOnOffAgainstStrict(t *testing.T) {
	t.Parallel()
	n := startAttackNode(t, nil)
	dir := n.container(t, "ml/onoff", "main", 2)
	w := n.run(t, dir, 1, 1024)
	n.waitFor(t, "the process attributed", func(s *node.Snapshot) bool { return processesOf(s, "onoff", "main") == 1 })
	stop := make(chan struct{})
	toggled := make(chan struct{})
	go func() {
		defer close(toggled)
		on := true
		for {
			select {
			case <-stop:
				_ = w.Cmd.Process.Signal(syscall.SIGUSR2)
				return
			case <-time.After(time.Second):
			}
			on = !on
			sig := syscall.SIGUSR1 // idle the GPU
			if on {
				sig = syscall.SIGUSR2
			}
			_ = w.Cmd.Process.Signal(sig)
		}
	}()
	time.Sleep(4 * time.Second)
	got := w.Share(t, 20*time.Second)
	close(stop)
	<-toggled
	if got > 0.26 {
		t.Errorf("on/off work got %.3f of the GPU over 20 s under a strict 20%% share", got)
	}
	t.Logf("on/off work got %.3f of the GPU over 20 s (limit 0.20)", got)
}

// The defect from the review: exemption is by namespace, and a process
// whose pod holds no slices and has no readable runtime record had an
// empty namespace, so it was killed even in an exempt namespace (a GPU
// Operator validator, an MPS daemon). The pod's namespace is now looked up
// by its UID among the node's pods, and a namespace that stays unknown is
// never killed or frozen: only reported. A known, non-exempt namespace is
// still killed beside them.
func TestAttackUnknownNamespaceIsNeverKilled(t *testing.T) {
	t.Parallel()
	exempt := "gpu-operator/validator"
	n := startAttackNode(t, func(o *enforce.Options) {
		o.UnauthorizedExempt = []string{"gpu-operator"}
		o.PodByUID = func(uid string) (string, string, bool) {
			if uid == kubeletstub.PodUID(exempt) {
				return "gpu-operator", "validator", true
			}
			return "", "", false
		}
	})
	n.container(t, "ml/other", "gpu", 2) // a checkpoint exists
	// No runtime record for either: the agent knows their pods' UIDs only.
	bare := func(pod string) string {
		dir := filepath.Join(n.podDir(pod), cid(pod, "main"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	validator := n.run(t, bare(exempt), 0.3, 256)
	unknown := n.run(t, bare("lost/pod"), 0.3, 256)
	stranger := n.run(t, n.container(t, "ml/noslices", "main", 0), 0.3, 256)
	if !stranger.Exited(20 * time.Second) {
		t.Fatalf("a known namespace's unauthorized use was not killed: %+v", n.smp.Snapshot().Unauthorized)
	}
	n.waitFor(t, "both seen as unauthorized", func(s *node.Snapshot) bool { return len(s.Unauthorized) == 2 })
	time.Sleep(time.Second) // several samples past
	if validator.Exited(time.Second) {
		t.Error("a process of an exempt namespace, known by its pod's UID, was killed")
	}
	if unknown.Exited(time.Second) {
		t.Error("a process whose namespace is unknown was killed")
	}
	if st := n.enf.UnauthorizedStats(); st.Killed != 1 {
		t.Errorf("stats %+v, want the one kill of the known namespace", st)
	}
}
