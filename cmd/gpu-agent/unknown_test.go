package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// Unknown is never free: the attacks a tenant (or a host user) mounts by
// making a container unknown to the agent, each judged by what the
// workloads and the kernel say (the GPU time a workload asked for, whether
// it was killed), on the users' host lane. Each fails on the agent that
// read the runtime's records only up to 4 MiB, froze an unnamed container
// instead of its pod, and charged any cgroup named after a container ID to
// that container.

// containerWith is container with the bundle b (none when nil), written
// before the container's cgroup exists, as the runtime writes it.
func (n *laneNode) containerWith(t *testing.T, pod, name string, slices int, b *kubeletstub.Bundle) string {
	t.Helper()
	if slices > 0 {
		if _, err := n.plugin.Allocate(ctxT(t), pod, name, slices); err != nil {
			t.Fatal(err)
		}
	}
	if b != nil {
		if _, err := kubeletstub.WriteContainerdBundleWith(n.runtime, pod, name, *b); err != nil {
			t.Fatal(err)
		}
	}
	return n.host.ContainerDir(t, "burstable", kubeletstub.PodUID(pod), kubeletstub.ContainerID(pod, name))
}

// stop kills a workload and waits for it.
func stop(t *testing.T, w laneWorkload) {
	t.Helper()
	_ = w.Cmd.Process.Signal(syscall.SIGKILL)
	if !w.Exited(10 * time.Second) {
		t.Fatal("a workload outlived SIGKILL")
	}
}

// killed reports whether an exited workload died of SIGKILL.
func killed(w laneWorkload) bool {
	ws, ok := w.Cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// absent reports whether no series of name has labels.
func (n *laneNode) absent(t *testing.T, name string, labels map[string]string) bool {
	t.Helper()
	_, found := value(scrape(t, n.addr), name, labels)
	return !found
}

func withLabel(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for a, b := range m {
		out[a] = b
	}
	return out
}

func TestUnknownIsNeverFree(t *testing.T) {
	t.Parallel()
	n := startLane(t, "gpuslice-unknown", "--compute-policy=strict")

	// A pod spec that swells its container's record: 720 KB of '<' in an
	// env value is 4.3 MB of JSON. The record is still read, so a sidecar
	// without slices is still known as one, and killed.
	t.Run("oversized record", func(t *testing.T) {
		n.container(t, "ml/padded", "main", 2)
		dir := n.containerWith(t, "ml/padded", "sidecar", 0, &kubeletstub.Bundle{Env: strings.Repeat("<", 720_000)})
		info, err := os.Stat(filepath.Join(n.runtime, kubeletstub.ContainerID("ml/padded", "sidecar"), "config.json"))
		if err != nil || info.Size() < 4<<20 {
			t.Fatalf("the padded record is not over 4 MiB: %v, %v", info, err)
		}
		sidecar := n.run(t, dir, 0.9, 2048)
		if !sidecar.Exited(20*time.Second) || !killed(sidecar) {
			t.Errorf("a sidecar without slices, with a 4.3 MB record, used the GPU and was never killed (%q)", sidecar.out.String())
		}
	})

	// A host user's cgroup outside the kubelet's tree, named after a
	// victim's container ID, is charged to nobody: the victim runs its
	// own demand, unthrottled, and its memory series is its own.
	t.Run("forged cgroup", func(t *testing.T) {
		id := kubeletstub.ContainerID("ml/victim", "main")
		uid := strings.ReplaceAll(kubeletstub.PodUID("ml/victim"), "-", "_")
		rel, err := filepath.Rel(n.host.Mount, n.host.Base)
		if err != nil {
			t.Fatal(err)
		}
		recorded := "/" + rel + "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid + ".slice/cri-containerd-" + id + ".scope"
		victimDir := n.containerWith(t, "ml/victim", "main", 2, &kubeletstub.Bundle{CgroupsPath: recorded})
		if victimDir != filepath.Join(n.host.Mount, recorded) {
			t.Fatalf("the victim's cgroup %s is not where its record says, %s", victimDir, recorded)
		}
		forgedDir := filepath.Join(n.host.Base, "user.slice", "user-1000.slice", "user@1000.service", id)
		if err := os.MkdirAll(forgedDir, 0o750); err != nil {
			t.Fatal(err)
		}
		victim := n.run(t, victimDir, 0.1, 512)
		forger := n.run(t, forgedDir, 1, 26<<10)
		n.waitMetric(t, "gpuslice_agent_unattributed_processes", map[string]string{"gpu": "0"}, func(v float64) bool { return v >= 1 })
		time.Sleep(2 * time.Second)
		// Judged by the kernel, not by how fast a loaded machine lets the
		// victim run (CI once saw it run 0.050 of the time unthrottled):
		// held for the forger's whole GPU under a 20 % share, its cgroup
		// would be frozen most of the time; its own 0.1 never freezes it.
		frozen, looks := 0, 0
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			v, err := os.ReadFile(filepath.Join(victimDir, "cgroup.freeze"))
			if err != nil {
				t.Fatal(err)
			}
			looks++
			if strings.TrimSpace(string(v)) == "1" {
				frozen++
			}
		}
		if frozen*10 > looks {
			t.Errorf("the victim's cgroup was frozen in %d of %d looks, wanting 0.1 under a 20%% share: it was throttled for the forger's use (it ran %.3f of the time)",
				frozen, looks, victim.Share(t, time.Second))
		}
		n.waitMetric(t, "gpuslice_container_memory_used_bytes", ctr("ml/victim", "main"), func(v float64) bool { return v == 512<<20 })
		if victim.Exited(0) {
			t.Error("the victim was killed for the forger's memory")
		}
		stop(t, forger)
		stop(t, victim)
	})

	// A sidecar the runtime has no record of, running a tiny decoy, in a
	// pod whose one GPU container is greedy: the pod is frozen, not the
	// decoy, so the greedy container is held to its strict 20 %.
	t.Run("decoy in an unnamed sidecar", func(t *testing.T) {
		mainDir := n.container(t, "ml/decoy", "main", 2)
		decoyDir := n.containerWith(t, "ml/decoy", "sidecar", 0, nil)
		decoy := n.run(t, decoyDir, 0.01, 64)
		greedy := n.run(t, mainDir, 1, 1024)
		time.Sleep(3 * time.Second)
		if got := greedy.Share(t, 4*time.Second); got > 0.45 {
			t.Errorf("the greedy container ran %.2f of the time under a strict 20%% share beside a decoy", got)
		}
		stop(t, greedy)
		stop(t, decoy)
	})

	// Two GPU containers, one the runtime has no record of: the pod is
	// held as one, to the 40 % and 34.2 GB its containers hold together;
	// both containers read use unknown, their use series absent, their
	// enforcement pod-level; a hog past the pod's total is killed.
	t.Run("two GPU containers, one unnamed", func(t *testing.T) {
		n.container(t, "ml/two", "a", 2)
		bDir := n.containerWith(t, "ml/two", "b", 2, nil)
		greedy := n.run(t, bDir, 1, 1024)
		for _, c := range []string{"a", "b"} {
			n.waitMetric(t, "gpuslice_container_use_unknown", ctr("ml/two", c), func(v float64) bool { return v == 1 })
			n.waitMetric(t, "gpuslice_enforcement_enforced", withLabel(withLabel(ctr("ml/two", c), "resource", "compute"), "reason", "pod-level"), func(v float64) bool { return v == 1 })
			if !n.absent(t, "gpuslice_container_sm_utilization_ratio", ctr("ml/two", c)) {
				t.Errorf("container %s of a pod with an unplaced process still reports its use", c)
			}
		}
		time.Sleep(2 * time.Second)
		if got := greedy.Share(t, 4*time.Second); got > 0.65 {
			t.Errorf("an unnamed GPU container ran %.2f of the time; its pod holds a strict 40%%", got)
		}
		hog := n.run(t, bDir, 0.01, 36<<10)
		if !hog.Exited(20 * time.Second) {
			t.Error("a 36 GiB process in a pod holding 34.2 GB was never killed")
		}
		stop(t, greedy)
	})
}
