package main

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// The users' host lane: the agent binary runs as the chart's agent runs on
// a unified cgroup v2 host with the systemd driver and containerd, in a
// private cgroup namespace rooted at its own container's cgroup, and
// tenants' pods live in a v2 tree under the systemd driver's names. There
// every other pod's /proc/<pid>/cgroup reads relative to the agent's own
// ("0::/../../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope").
// Each scenario is judged by what the kernel and the workloads say (the
// workload's own record of the GPU time it asked for, exit statuses, the
// fake driver's allocator), never only by the agent's metrics.

// laneNode is one agent in the lane and the tenants around it.
type laneNode struct {
	host    *cgrouptest.UsersHost
	st      *stubbed
	plugin  *kubeletstub.Plugin
	runtime string // containerd's state dir, with each container's bundle
	bin     string // the fake GPU workload
	addr    string
	agent   *agentProc
	gpu     string
	limits  map[string]float64 // memory Allocate gave, by "<pod>/<container>"
}

// startLane starts the agent in its private cgroup namespace with extra
// flags.
func startLane(t *testing.T, name string, extra ...string) *laneNode {
	t.Helper()
	n := startLaneOn(t, cgrouptest.NewUsersHost(t, "/sys/fs/cgroup", name), append([]string{"--cgroup-root=/sys/fs/cgroup"}, extra...)...)
	if !strings.Contains(n.agent.stderr.String(), "agent runs in a private cgroup namespace") {
		t.Fatalf("the agent did not find itself in a private cgroup namespace:\n%s", n.agent.stderr.String())
	}
	return n
}

// startLaneOn starts the agent in its private cgroup namespace in host h;
// extra flags come last (and so win).
func startLaneOn(t *testing.T, h *cgrouptest.UsersHost, extra ...string) *laneNode {
	t.Helper()
	n := &laneNode{
		host:    h,
		st:      stubKubelet(t, "preset: H100-80GB\ncount: 1\ndriverMemoryLimits: true\n"),
		runtime: t.TempDir(),
		addr:    freePort(t),
		limits:  map[string]float64{},
	}
	var err error
	if n.bin, err = fakegpu.BuildWorkload(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	args := append(n.st.agentArgs(), "--slices-per-gpu=10", "--sample-interval=200ms",
		"--runtime-state-dirs="+n.runtime, "--metrics-address="+n.addr)
	n.agent = startAgentWith(t, func(args ...string) *exec.Cmd {
		return cgrouptest.InPrivateNamespace(n.host.AgentDir(t), append([]string{agentBin}, args...)...)
	}, append(args, extra...)...)
	if n.plugin, err = n.st.kubelet.WaitPlugin(ctxT(t), "nvidia.com/vgpu"); err != nil {
		t.Fatal(err)
	}
	return n
}

// container allocates slices (none when 0) to a container of pod, records
// its bundle as containerd does and makes its cgroup; it returns the
// cgroup directory.
func (n *laneNode) container(t *testing.T, pod, name string, slices int) string {
	t.Helper()
	if slices > 0 {
		a, err := n.plugin.Allocate(ctxT(t), pod, name, slices)
		if err != nil {
			t.Fatal(err)
		}
		n.gpu = a.Response.Envs["NVIDIA_VISIBLE_DEVICES"]
		limit, err := strconv.ParseFloat(a.Response.Envs["GPUSLICE_MEMORY_LIMIT_BYTES"], 64)
		if err != nil {
			t.Fatal(err)
		}
		n.limits[pod+"/"+name] = limit
	}
	id, err := kubeletstub.WriteContainerdBundle(n.runtime, pod, name)
	if err != nil {
		t.Fatal(err)
	}
	return n.host.ContainerDir(t, "burstable", kubeletstub.PodUID(pod), id)
}

// laneWorkload is a tenant's GPU process and what it wrote to stderr.
type laneWorkload struct {
	*cgrouptest.Workload
	out *syncBuffer
}

// run starts a workload in cgroup dir wanting demand of the GPU and mib
// of its memory.
func (n *laneNode) run(t *testing.T, dir string, demand float64, mib int) laneWorkload {
	t.Helper()
	cmd := cgrouptest.InCgroup(dir, n.bin, "--dir", n.st.work, "--gpu", n.gpu,
		"--demand", strconv.FormatFloat(demand, 'f', -1, 64), "--memory-mib", strconv.Itoa(mib), "--tick", "5ms")
	out := &syncBuffer{}
	cmd.Stderr = out
	return laneWorkload{cgrouptest.StartWorkload(t, cmd, n.st.work, dir), out}
}

// waitMetric scrapes until the series with labels satisfies ok.
func (n *laneNode) waitMetric(t *testing.T, name string, labels map[string]string, ok func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		mfs := scrape(t, n.addr)
		if v, found := value(mfs, name, labels); found && ok(v) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v never as wanted; last: %v", name, labels, mfs[name])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ctr(pod, container string) map[string]string {
	ns, name, _ := strings.Cut(pod, "/")
	return map[string]string{"namespace": ns, "pod": name, "container": container}
}

// TestUsersHostLane: in the agent's private cgroup namespace, pods are
// attributed by UID, a greedy strict container and a process in its pod's
// own cgroup are throttled to their shares, the driver's limit lands on the
// container's real cgroup (an allocation past it fails inside), the
// watchdog kills a pod-level process over its pod's memory, and a sidecar
// using the GPU without slices is killed.
func TestUsersHostLane(t *testing.T) {
	t.Parallel()
	n := startLane(t, "gpuslice-lane", "--compute-policy=strict")

	greedyDir := n.container(t, "ml/greedy", "main", 2) // 20 %, 17.1 GB
	greedy := n.run(t, greedyDir, 1, 1024)
	podLevelDir := n.host.PodDir(t, "burstable", kubeletstub.PodUID("ml/escape"))
	n.container(t, "ml/escape", "main", 2)
	escaped := n.run(t, podLevelDir, 1, 1024)

	// Attributed by pod UID: the series carry the pods' names.
	n.waitMetric(t, "gpuslice_container_memory_used_bytes", ctr("ml/greedy", "main"), func(v float64) bool { return v == 1<<30 })
	n.waitMetric(t, "gpuslice_container_memory_used_bytes", ctr("ml/escape", "main"), func(v float64) bool { return v == 1<<30 })
	// The driver's limit is set on the container's real cgroup.
	n.waitMetric(t, "gpuslice_enforcement_driver_memory_limit_bytes", ctr("ml/greedy", "main"), func(v float64) bool { return v == n.limits["ml/greedy/main"] })

	// Throttled, judged by the work each workload says it did: unheld,
	// each would run all the time; held, about a fifth.
	time.Sleep(2 * time.Second)
	if got := greedy.Share(t, 4*time.Second); got > 0.45 {
		t.Errorf("the greedy container ran %.2f of the time under a strict 20%% share", got)
	}
	if got := escaped.Share(t, 2*time.Second); got > 0.45 {
		t.Errorf("the pod-level process ran %.2f of the time under its pod's strict 20%% share", got)
	}

	// Past the driver's limit, an allocation fails inside the container.
	over := n.run(t, greedyDir, 0.01, 16<<10)
	if !over.Exited(15*time.Second) || !strings.Contains(over.out.String(), "out of memory") {
		t.Errorf("an allocation past the driver limit was not refused: %q", over.out.String())
	}

	// The watchdog: a pod-level process (the driver tier limits container
	// cgroups only) over its pod's 8.6 GB is killed.
	n.container(t, "ml/podhog", "main", 1)
	hog := n.run(t, n.host.PodDir(t, "burstable", kubeletstub.PodUID("ml/podhog")), 0.01, 12<<10)
	if !hog.Exited(20 * time.Second) {
		t.Error("a pod-level process over its pod's memory was never killed")
	}

	// A sidecar of a pod holding slices reaches the GPU without any: killed.
	sidecar := n.run(t, n.container(t, "ml/greedy", "sidecar", 0), 0.3, 1024)
	if !sidecar.Exited(20 * time.Second) {
		t.Error("a sidecar using the GPU without slices was never killed")
	}
	if greedy.Exited(0) || escaped.Exited(0) {
		t.Error("a workload within its limits was killed")
	}
}

// TestUsersHostLaneUnresolved: where the agent cannot place its own cgroup
// namespace (here its cgroup root is a mount of a subtree it is not in),
// nothing is guessed and nothing is silent: each container reads
// unenforced with reason cgroup-unresolved, a Warning is logged per
// container, the node's compute tier reads unavailable; under
// --enforcement=required the node offers no slices at all.
func TestUsersHostLaneUnresolved(t *testing.T) {
	t.Parallel()
	t.Run("best-effort", func(t *testing.T) {
		t.Parallel()
		h := cgrouptest.NewUsersHost(t, "/sys/fs/cgroup", "gpuslice-lane-unresolved")
		elsewhere := h.PodDir(t, "besteffort", "0c0c0c0c-0c0c-4c0c-8c0c-0c0c0c0c0c0c")
		n := startLaneOn(t, h, "--cgroup-root="+elsewhere, "--compute-policy=strict")
		w := n.run(t, n.container(t, "ml/greedy", "main", 2), 1, 1024)
		n.waitMetric(t, "gpuslice_enforcement_enforced", map[string]string{"namespace": "ml", "pod": "greedy", "container": "main",
			"resource": "compute", "reason": "cgroup-unresolved"}, func(v float64) bool { return v == 0 })
		n.waitMetric(t, "gpuslice_enforcement_available", map[string]string{"resource": "compute", "reason": "cgroup-unresolved"},
			func(v float64) bool { return v == 0 })
		// The state is exported from the container's cgroup path; the
		// warning comes from the next enforcement round, which may follow
		// the scrape that saw the state: wait for it, do not race it.
		warning := `msg="cannot enforce compute share" namespace=ml pod=greedy container=main reason=cgroup-unresolved`
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(n.agent.stderr.String(), warning); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("no warning for the unenforced container:\n%s", n.agent.stderr.String())
				break
			}
		}
		if w.Exited(0) {
			t.Error("the workload was killed")
		}
		if len(n.plugin.Devices()) == 0 || n.plugin.Devices()[0].Health != "Healthy" {
			t.Errorf("best-effort withheld the slices: %v", n.plugin.Devices())
		}
	})
	t.Run("required", func(t *testing.T) {
		t.Parallel()
		h := cgrouptest.NewUsersHost(t, "/sys/fs/cgroup", "gpuslice-lane-required")
		elsewhere := h.PodDir(t, "besteffort", "0d0d0d0d-0d0d-4d0d-8d0d-0d0d0d0d0d0d")
		n := startLaneOn(t, h, "--cgroup-root="+elsewhere, "--enforcement=required")
		deadline := time.Now().Add(10 * time.Second)
		for {
			devs := n.plugin.Devices()
			unhealthy := 0
			for _, d := range devs {
				if d.Health == "Unhealthy" {
					unhealthy++
				}
			}
			if len(devs) == 10 && unhealthy == 10 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("slices offered under --enforcement=required on a node that cannot enforce: %v", devs)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if _, err := n.plugin.Allocate(ctxT(t), "ml/any", "main", 1); err == nil {
			t.Error("Allocate succeeded on a node that withholds its slices")
		}
		if !strings.Contains(n.agent.stderr.String(), "offering no slices: enforcement is required and cannot engage on this node") {
			t.Errorf("the agent did not say why it offers nothing:\n%s", n.agent.stderr.String())
		}
	})
}
