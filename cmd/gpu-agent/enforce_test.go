package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/fakegpu"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// TestNoContainerLeftFrozenAfterSIGKILL throttles a greedy pod under the
// strict policy, kills the agent with SIGKILL, and checks that the next
// agent thaws the pod at once, before doing anything else.
func TestNoContainerLeftFrozenAfterSIGKILL(t *testing.T) {
	t.Parallel()
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-sigkill-test-%d", os.Getpid()))
	st := stubKubelet(t, "preset: H100-80GB\ncount: 1\n")
	k, work := st.kubelet, st.work
	state := filepath.Join(t.TempDir(), "enforcement.json")
	args := append(st.agentArgs(), "--slices-per-gpu=10", "--sample-interval=200ms", "--enforcement-state="+state)
	first := startAgent(t, append(args, "--compute-policy=strict", "--metrics-address="+freePort(t))...)
	p, err := k.WaitPlugin(ctxT(t), "nvidia.com/vgpu")
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.Allocate(ctxT(t), "ml/greedy", "main", 3)
	if err != nil {
		t.Fatal(err)
	}
	cg := containerCgroup(t, base, kubeletstub.PodUID("ml/greedy"), strings.Repeat("c", 64))
	bin, err := fakegpu.BuildWorkload(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--dir", work, "--gpu", a.Response.Envs["NVIDIA_VISIBLE_DEVICES"], "--demand", "1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("0"), 0o600)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}

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
	if v, _ := os.ReadFile(freeze); strings.TrimSpace(string(v)) != "1" {
		// Killed in a running phase: leave it frozen ourselves, the worst
		// case a SIGKILL can cause.
		if err := os.WriteFile(freeze, []byte("1"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// The next agent, here with the throttle off, thaws it first thing.
	second := startAgent(t, append(args, "--enforce-compute=false", "--metrics-address="+freePort(t))...)
	deadline = time.Now().Add(10 * time.Second)
	for {
		v, _ := os.ReadFile(freeze)
		if strings.TrimSpace(string(v)) == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted agent did not thaw %s\n%s", freeze, second.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(second.stderr.String(), "thawed containers a previous agent left throttled") {
		t.Errorf("restarted agent did not log the thaw:\n%s", second.stderr.String())
	}
	if data, _ := os.ReadFile(state); strings.TrimSpace(string(data)) != "null" && strings.TrimSpace(string(data)) != "[]" {
		t.Errorf("state still records throttles after the thaw: %s", data)
	}
}
