package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// TestNoContainerLeftFrozenAfterSIGKILL throttles a greedy pod under the
// strict policy, kills the agent with SIGKILL, and checks that the next
// agent thaws the pod at once, before doing anything else.
func TestNoContainerLeftFrozenAfterSIGKILL(t *testing.T) {
	t.Parallel()
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-sigkill-test-%d", os.Getpid()))
	st := stubKubelet(t, "preset: H100-80GB\ncount: 1\n")
	state := filepath.Join(t.TempDir(), "enforcement.json")
	args := append(st.agentArgs(), "--slices-per-gpu=10", "--sample-interval=200ms", "--enforcement-state="+state)
	first := startAgent(t, append(args, "--compute-policy=strict", "--metrics-address="+freePort(t))...)
	cg := greedyPod(t, st, base, 3, strings.Repeat("c", 64))

	// Wait until the agent throttles the pod and has recorded it.
	freeze := filepath.Join(cg, "cgroup.freeze")
	deadline := time.Now().Add(20 * time.Second)
	for {
		data, _ := os.ReadFile(state)
		var recorded []string
		_ = json.Unmarshal(data, &recorded)
		if len(recorded) == 1 && recorded[0] == freeze {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent never recorded a throttle of %s; state %q\n%s", freeze, data, first.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // deep into throttling
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.wait(t)
	// The next agent, here with the throttle off, thaws it first thing.
	second := restartOnFrozen(t, freeze, append(args, "--enforce-compute=false", "--metrics-address="+freePort(t)))
	// The thaw comes first; the log line and the cleared record follow it
	// (a loaded machine can show the gap).
	deadline = time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(state)
		cleared := strings.TrimSpace(string(data)) == "null" || strings.TrimSpace(string(data)) == "[]"
		logged := strings.Contains(second.stderr.String(), "thawed containers a previous agent left throttled")
		if cleared && logged {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the thaw: record %s (cleared %v), logged %v\n%s", data, cleared, logged, second.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNoContainerLeftFrozenAfterFullDiskAndSIGKILL: the agent's record
// cannot be written (its directory is a full filesystem), it throttles a
// greedy pod and is killed with SIGKILL with the pod frozen. The next
// agent, which has no record to read, knows the freeze as its own by the
// mark on the cgroup and thaws it; a pod frozen by someone else beside it
// stays frozen.
func TestNoContainerLeftFrozenAfterFullDiskAndSIGKILL(t *testing.T) {
	t.Parallel()
	full := t.TempDir()
	if err := syscall.Mount("tmpfs", full, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		if os.Getenv("GPUSLICE_REQUIRE_ROOT") != "" {
			t.Fatalf("root is required (GPUSLICE_REQUIRE_ROOT is set): mount tmpfs: %v", err)
		}
		t.Skipf("cannot mount a tmpfs (not root?): %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(full, syscall.MNT_DETACH) })
	// Fill it: what is left cannot hold a record.
	_ = os.WriteFile(filepath.Join(full, "filler"), make([]byte, 1<<20), 0o600)
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-fulldisk-test-%d", os.Getpid()))
	st := stubKubelet(t, "preset: H100-80GB\ncount: 1\n")
	state := filepath.Join(full, "enforcement.json")
	args := append(st.agentArgs(), "--slices-per-gpu=10", "--sample-interval=200ms", "--enforcement-state="+state)
	first := startAgent(t, append(args, "--compute-policy=strict", "--metrics-address="+freePort(t))...)
	cg := greedyPod(t, st, base, 3, strings.Repeat("d", 64))
	// Paused by someone else, beside it in the same pod.
	paused := filepath.Join(filepath.Dir(cg), strings.Repeat("f", 64))
	if err := os.Mkdir(paused, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(paused, "cgroup.freeze"), []byte("0"), 0o600)
		_ = os.Remove(paused)
	})
	if err := os.WriteFile(filepath.Join(paused, "cgroup.freeze"), []byte("1"), 0o600); err != nil {
		t.Fatal(err)
	}
	freeze := filepath.Join(cg, "cgroup.freeze")
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(first.stderr.String(), "no space left on device") {
		if time.Now().After(deadline) {
			t.Fatalf("the agent never failed to write its record:\n%s", first.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // deep into throttling
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.wait(t)
	if data, _ := os.ReadFile(state); len(data) > 2 {
		t.Fatalf("a record was written on the full filesystem: %q", data)
	}
	restartOnFrozen(t, freeze, append(args, "--enforce-compute=false", "--metrics-address="+freePort(t)))
	if v, _ := os.ReadFile(filepath.Join(paused, "cgroup.freeze")); strings.TrimSpace(string(v)) != "1" {
		t.Errorf("the restarted agent thawed a cgroup someone else froze: cgroup.freeze %q", v)
	}
}

// restartOnFrozen leaves the cgroup of control file freeze frozen, the
// worst a SIGKILL in a running phase can leave, starts an agent with args
// and waits for it to thaw the cgroup.
func restartOnFrozen(t *testing.T, freeze string, args []string) *agentProc {
	t.Helper()
	if v, _ := os.ReadFile(freeze); strings.TrimSpace(string(v)) != "1" {
		if err := os.WriteFile(freeze, []byte("1"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a := startAgent(t, args...)
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, _ := os.ReadFile(freeze)
		if strings.TrimSpace(string(v)) == "0" {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted agent did not thaw %s\n%s", freeze, a.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// greedyPod allocates slices to pod ml/greedy on the stand-in kubelet and
// runs a workload wanting the whole GPU in its container's cgroup (id cid
// under base), moved there before it starts; it returns the cgroup.
func greedyPod(t *testing.T, st *stubbed, base string, slices int, cid string) string {
	t.Helper()
	work := st.work
	if err := kubeletstub.WriteContainerdBundleOf(st.runtime, cid, "ml/greedy", "main", kubeletstub.Bundle{}); err != nil {
		t.Fatal(err)
	}
	p, err := st.kubelet.WaitPlugin(ctxT(t), "nvidia.com/vgpu")
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.Allocate(ctxT(t), "ml/greedy", "main", slices)
	if err != nil {
		t.Fatal(err)
	}
	cg := containerCgroup(t, base, kubeletstub.PodUID("ml/greedy"), cid)
	bin, err := fakegpu.BuildWorkload(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg, bin,
		"--dir", work, "--gpu", a.Response.Envs["NVIDIA_VISIBLE_DEVICES"], "--demand", "1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("0"), 0o600)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cg
}

// TestDriverMemoryLimits runs the agent on a fake driver with per-cgroup
// memory limits: a container's cgroup gets its limit when it appears, an
// allocation past it fails inside the container, and the limit is cleared
// when the container ends.
func TestDriverMemoryLimits(t *testing.T) {
	t.Parallel()
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-driver-test-%d", os.Getpid()))
	st := stubKubelet(t, "preset: H100-80GB\ncount: 1\ndriverMemoryLimits: true\n")
	addr := freePort(t)
	agent := startAgent(t, append(st.agentArgs(), "--slices-per-gpu=10", "--sample-interval=200ms", "--cgroup-root=/sys/fs/cgroup", "--metrics-address="+addr)...)
	p, err := st.kubelet.WaitPlugin(ctxT(t), "nvidia.com/vgpu")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(agent.stderr.String(), "driver GPU memory limits in force") {
		t.Fatalf("the agent did not take up the driver's memory limits:\n%s", agent.stderr.String())
	}
	a, err := p.Allocate(ctxT(t), "ml/capped", "main", 2)
	if err != nil {
		t.Fatal(err)
	}
	gpu := a.Response.Envs["NVIDIA_VISIBLE_DEVICES"]
	limit, err := strconv.ParseUint(a.Response.Envs["GPUSLICE_MEMORY_LIMIT_BYTES"], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := kubeletstub.WriteContainerdBundleOf(st.runtime, strings.Repeat("d", 64), "ml/capped", "main", kubeletstub.Bundle{}); err != nil {
		t.Fatal(err)
	}
	cg := containerCgroup(t, base, kubeletstub.PodUID("ml/capped"), strings.Repeat("d", 64))
	bin, err := fakegpu.BuildWorkload(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	start := func(mib uint64) (*exec.Cmd, *syncBuffer, chan error) {
		out := &syncBuffer{}
		cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg, bin,
			"--dir", st.work, "--gpu", gpu, "--demand", "0.1", "--memory-mib", strconv.FormatUint(mib, 10))
		cmd.Stderr = out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The first receive takes the result; the cleanup and any later
		// check see the channel closed.
		done := make(chan error, 1)
		go func() { done <- cmd.Wait(); close(done) }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
		return cmd, out, done
	}
	half := limit >> 20 / 2
	first, _, firstDone := start(half)

	pod := map[string]string{"namespace": "ml", "pod": "capped", "container": "main", "uuid": gpu}
	deadline := time.Now().Add(15 * time.Second)
	for {
		mfs := scrape(t, addr)
		v, ok := value(mfs, "gpuslice_enforcement_driver_memory_limit_bytes", pod)
		tier, _ := value(mfs, "gpuslice_enforcement_tier", map[string]string{"uuid": gpu, "resource": "memory", "tier": "driver"})
		used, _ := value(mfs, "gpuslice_container_memory_used_bytes", pod)
		// The first process holds its memory before the second asks.
		if ok && uint64(v) == limit && tier == 1 && uint64(used) == half<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no driver limit of %d in the metrics: %v\n%s", limit, mfs["gpuslice_enforcement_driver_memory_limit_bytes"], agent.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Past the limit: the allocation fails inside the container; the
	// process within it runs on.
	_, out, secondDone := start(half + 64)
	select {
	case err := <-secondDone:
		if err == nil || !strings.Contains(out.String(), "out of memory") {
			t.Fatalf("second workload: %v: %s; want out of memory", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an allocation past the driver limit was not refused")
	}
	select {
	case err := <-firstDone:
		t.Fatalf("the workload within its limit ended: %v", err)
	default:
	}

	// The container ends: its limit is cleared before its cgroup goes.
	_ = first.Process.Kill()
	<-firstDone
	deadline = time.Now().Add(10 * time.Second)
	for {
		v, _ := value(scrape(t, addr), "gpuslice_enforcement_driver_memory_limit_operations_total", map[string]string{"result": "cleared"})
		if v == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the limit was never cleared\n%s", agent.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSIGTERMThawsAtOnceDespiteIdleClients: with a client holding an idle
// connection on the plugin socket (grpc's Stop would wait two minutes for
// its handshake) and the pod throttled under strict, SIGTERM thaws the pod
// at once and the agent exits promptly.
func TestSIGTERMThawsAtOnceDespiteIdleClients(t *testing.T) {
	t.Parallel()
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-sigterm-test-%d", os.Getpid()))
	st := stubKubelet(t, "preset: H100-80GB\ncount: 1\n")
	agent := startAgent(t, append(st.agentArgs(), "--slices-per-gpu=10", "--sample-interval=200ms", "--compute-policy=strict", "--metrics-address="+freePort(t))...)
	cg := greedyPod(t, st, base, 2, strings.Repeat("e", 64))
	idle, err := net.Dial("unix", agentSocket(t, st.dir))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = idle.Close() }()

	// Wait until it is frozen at least once: throttled.
	freeze := filepath.Join(cg, "cgroup.freeze")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if v, _ := os.ReadFile(freeze); strings.TrimSpace(string(v)) == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never throttled\n%s", agent.stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := agent.wait(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	if v, _ := os.ReadFile(freeze); strings.TrimSpace(string(v)) != "0" {
		t.Errorf("the pod is left frozen (%q) after SIGTERM", v)
	}
}
