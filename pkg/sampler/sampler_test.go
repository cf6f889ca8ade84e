package sampler_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/sampler"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

var workloadBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sampler-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if workloadBin, err = fakegpu.BuildWorkload(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

const cidA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
const cidB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

// inContainer writes what /proc/<pid> would say for a process of the
// given pod and container: its cgroup and its environment.
func inContainer(t *testing.T, procRoot string, pid int, pod, cid string, sliceIDs []string) {
	t.Helper()
	dir := filepath.Join(procRoot, fmt.Sprint(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cg := fmt.Sprintf("0::/kubepods/burstable/pod%s/%s\n", kubeletstub.PodUID(pod), cid)
	if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The start time lets the sampler tell this process from a later one
	// with the same PID.
	stat := fmt.Sprintf("%d (workload) S 1 %d %d 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 1000 10 0\n", pid, pid, pid)
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o600); err != nil {
		t.Fatal(err)
	}
	env := "PATH=/bin\x00GPUSLICE_SLICE_IDS=" + strings.Join(sliceIDs, ",") + "\x00"
	if err := os.WriteFile(filepath.Join(dir, "environ"), []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
}

func startWorkload(t *testing.T, dir, gpu string, mib int, demand float64) int {
	t.Helper()
	cmd := exec.Command(workloadBin, "--dir", dir, "--gpu", gpu, "--memory-mib", fmt.Sprint(mib), "--demand", fmt.Sprint(demand))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	return cmd.Process.Pid
}

func within(t *testing.T, what string, got, lo, hi float64) {
	t.Helper()
	if got < lo || got > hi || math.IsNaN(got) {
		t.Errorf("%s = %.3f, want within [%.2f, %.2f]", what, got, lo, hi)
	}
}

func TestSharedGPUAttributedPerContainer(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	kn := kubeletstub.StartNode(t, fakegpu.Config{Preset: "A100-40GB", Count: 2, WorkloadDir: work}, 8)
	ctx := context.Background()
	a, err := kn.Connection.Allocate(ctx, "ml/a", "main", 2)
	if err != nil {
		t.Fatal(err)
	}
	b, err := kn.Connection.Allocate(ctx, "ml/b", "main", 3)
	if err != nil {
		t.Fatal(err)
	}
	gpu := a.Response.Envs["NVIDIA_VISIBLE_DEVICES"]
	if b.Response.Envs["NVIDIA_VISIBLE_DEVICES"] != gpu {
		t.Fatalf("binpack put the pods on different GPUs: %s and %s", gpu, b.Response.Envs["NVIDIA_VISIBLE_DEVICES"])
	}
	procRoot := t.TempDir()
	pidA := startWorkload(t, work, gpu, 1024, 0.2)
	pidB := startWorkload(t, work, gpu, 4096, 0.5)
	stray := startWorkload(t, work, gpu, 512, 0.1) // a host process: no cgroup of a pod
	inContainer(t, procRoot, pidA, "ml/a", cidA, a.DeviceIDs)
	inContainer(t, procRoot, pidB, "ml/b", cidB, b.DeviceIDs)

	client, err := podresources.New(func() podresources.Options {
		o := podresources.DefaultOptions()
		o.Socket = kn.PodResourcesSocket
		return o
	}())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	opts := sampler.DefaultOptions()
	opts.Interval = 250 * time.Millisecond
	opts.ProcRoot = procRoot
	opts.PluginDir = kn.Dir
	s, err := sampler.New(kn.Devices, kn.Layout, kn.GPU, client, kn.Health, opts)
	if err != nil {
		t.Fatal(err)
	}
	if s.Ready() {
		t.Fatal("Ready() before any sample")
	}
	// Let the workloads publish, then sample over about two seconds.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.SampleOnce(ctx)
		if n := len(s.Snapshot().Unattributed); n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workloads never all seen: %+v", s.Snapshot())
		}
		time.Sleep(100 * time.Millisecond)
	}
	first := s.Snapshot()
	for range 8 {
		time.Sleep(250 * time.Millisecond)
		s.SampleOnce(ctx)
	}
	snap := s.Snapshot()
	elapsed := snap.Time.Sub(first.Time).Seconds()

	byPod := map[string]node.Container{}
	for _, c := range snap.Containers {
		byPod[c.Pod] = c
	}
	ca, cb := byPod["a"], byPod["b"]
	if ca.Slices != 2 || cb.Slices != 3 || ca.MemoryLimitBytes != 2*5<<30 || cb.ComputeLimitRatio != 3.0/8 {
		t.Errorf("limits: a=%+v b=%+v", ca, cb)
	}
	if ca.PodUID != kubeletstub.PodUID("ml/a") || ca.Namespace != "ml" || ca.Container != "main" {
		t.Errorf("identity of a = %+v", ca)
	}
	if ca.MemoryUsedBytes != 1024<<20 || cb.MemoryUsedBytes != 4096<<20 || ca.Processes != 1 {
		t.Errorf("memory used: a=%d b=%d", ca.MemoryUsedBytes, cb.MemoryUsedBytes)
	}
	// The fake workloads only make progress with CPU time, so a loaded
	// machine lowers every share alike: judge each container's number by
	// its own demand (never above it, in proportion to the other's), not
	// by absolute levels. Swapped or shared numbers fail both checks.
	within(t, "a's SM utilization", ca.SMUtilization, 0.04, 0.28)
	within(t, "b's SM utilization", cb.SMUtilization, 0.12, 0.58)
	within(t, "b's SM utilization over a's (demands 0.5 and 0.2)", cb.SMUtilization/ca.SMUtilization, 1.6, 4)
	// The busy-seconds rates differ as the demands do.
	rateA := (ca.BusySeconds - busy(first, "a")) / elapsed
	rateB := (cb.BusySeconds - busy(first, "b")) / elapsed
	within(t, "a's busy seconds per second", rateA, 0.04, 0.3)
	within(t, "b's busy seconds per second", rateB, 0.12, 0.6)
	within(t, "b's busy seconds over a's", rateB/rateA, 1.5, 4.5)
	if ca.LastActive.IsZero() || ca.LastActive.Before(first.Time) {
		t.Errorf("a's last active = %v", ca.LastActive)
	}

	var dev node.Device
	for _, d := range snap.Devices {
		if d.UUID == gpu {
			dev = d
		}
	}
	if !dev.SampleOK || dev.Allocated != 5 || dev.Slices != 8 || !dev.Health.Healthy {
		t.Errorf("device = %+v", dev)
	}
	// The device is busy with all three; the containers' share is theirs.
	// The device is busy with all three: at least the containers' sum, the
	// stray process on top, never more than the whole GPU.
	within(t, "device utilization less the containers'", dev.Sample.Utilization-(ca.SMUtilization+cb.SMUtilization), -0.02, 0.2)
	within(t, "device utilization", dev.Sample.Utilization, 0.2, 1)
	if got, want := dev.Sample.MemoryUsedBytes, ca.MemoryUsedBytes+cb.MemoryUsedBytes+512<<20; got != want {
		t.Errorf("device memory used = %d, want %d", got, want)
	}
	if u := snap.Unattributed; len(u) != 1 || u[0].PID != stray || !strings.Contains(u[0].Reason, "not in a pod or container") {
		t.Errorf("unattributed = %+v, want the stray process", u)
	}

	// NVML cannot list the GPU's processes: the containers' use is unknown,
	// never zero, and nothing is integrated meanwhile.
	if err := kn.GPU.FailCall(fakegpu.CallProcesses, true); err != nil {
		t.Fatal(err)
	}
	s.SampleOnce(ctx)
	blind := s.Snapshot()
	for _, c := range blind.Containers {
		if !c.Blind || c.BusySeconds != busy(snap, c.Pod) || c.Cgroup.Key() == "" {
			t.Errorf("container %s while blind: %+v; want blind, its busy seconds and cgroup kept", c.Pod, c)
		}
	}
	for _, d := range blind.Devices {
		if d.UUID == gpu && (!d.Blind() || d.ProcessesOK) {
			t.Errorf("device while blind: %+v", d)
		}
	}
	if err := kn.GPU.FailCall(fakegpu.CallProcesses, false); err != nil {
		t.Fatal(err)
	}

	// The kubelet goes away: errors are counted, the containers stay.
	kn.PodResources.Stop()
	s.SampleOnce(ctx)
	snap = s.Snapshot()
	if snap.Errors[node.SourcePodResources] == 0 || len(snap.Containers) != 2 {
		t.Errorf("with the kubelet gone: errors %v, %d containers", snap.Errors, len(snap.Containers))
	}
	// A container that lets go of its slices loses its series.
	kn.Connection.Release("ml/a", "main")
	if err := kn.PodResources.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(s.Snapshot().Containers) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("released container still reported: %+v", s.Snapshot().Containers)
		}
		time.Sleep(100 * time.Millisecond)
		s.SampleOnce(ctx)
	}
}

func busy(s *node.Snapshot, pod string) float64 {
	for _, c := range s.Containers {
		if c.Pod == pod {
			return c.BusySeconds
		}
	}
	return 0
}
