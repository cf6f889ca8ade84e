package fakegpu

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

var (
	workloadOnce sync.Once
	workloadBin  string
	workloadErr  error
)

// workload starts the real workload program against dir.
func startWorkload(t *testing.T, dir, gpu string, memMiB int, demand float64) *exec.Cmd {
	t.Helper()
	workloadOnce.Do(func() {
		var d string
		if d, workloadErr = os.MkdirTemp("", "fake-workload"); workloadErr == nil {
			workloadBin, workloadErr = BuildWorkload(d)
		}
	})
	if workloadErr != nil {
		t.Fatal(workloadErr)
	}
	cmd := exec.Command(workloadBin, "--dir", dir, "--gpu", gpu, "--memory-mib", fmt.Sprint(memMiB), "--demand", fmt.Sprint(demand))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGCONT)
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	})
	return cmd
}

// window advances the node over about d and returns each GPU's sample and
// processes for that window.
func window(t *testing.T, n *Node, d time.Duration) (map[string]nvml.Sample, map[string]map[int]nvml.Process) {
	t.Helper()
	devs, _ := n.Devices()
	for _, dev := range devs {
		if _, err := n.Sample(dev.UUID); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(d)
	// Read every GPU at one instant: a starved test process could
	// otherwise take its readings more than minWindow apart, and the later
	// ones would describe a sliver of a window in which a workload (which
	// publishes every 20 ms) may have published nothing.
	at := time.Now()
	n.mu.Lock()
	n.now = func() time.Time { return at }
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.now = time.Now
		n.mu.Unlock()
	}()
	samples := map[string]nvml.Sample{}
	procs := map[string]map[int]nvml.Process{}
	for _, dev := range devs {
		s, err := n.Sample(dev.UUID)
		if err != nil {
			t.Fatal(err)
		}
		samples[dev.UUID] = s
		ps, err := n.Processes(dev.UUID)
		if err != nil {
			t.Fatal(err)
		}
		procs[dev.UUID] = map[int]nvml.Process{}
		for _, p := range ps {
			procs[dev.UUID][p.PID] = p
		}
	}
	return samples, procs
}

func near(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 0.1 {
		t.Errorf("%s = %.3f, want %.2f ± 0.1", what, got, want)
	}
}

func TestWorkloadsTimeShareTheGPU(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	n, err := New(Config{Preset: "H100-80GB", Count: 2, WorkloadDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := n.Devices()
	g0, g1 := devs[0].UUID, devs[1].UUID
	a := startWorkload(t, dir, g0, 1024, 0.3)
	b := startWorkload(t, dir, g1, 2048, 0.6)
	c := startWorkload(t, dir, g1, 4096, 0.6)
	// Let every workload publish and the node see each one once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, procs := window(t, n, 100*time.Millisecond)
		if len(procs[g0]) == 1 && len(procs[g1]) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workloads never appeared: %v", procs)
		}
	}

	// A loaded machine slows the workloads themselves (they ask the GPU
	// for less), so the physics are judged by what holds under any load:
	// ceilings, the split between equals, and utilization as the sum of
	// the shares. The exact shares are the GPU model's (test/accuracy).
	samples, procs := window(t, n, time.Second)
	ua, ub, uc := procs[g0][a.Process.Pid].SMUtilization, procs[g1][b.Process.Pid].SMUtilization, procs[g1][c.Process.Pid].SMUtilization
	if ua > 0.32 || ua < 0.1 {
		t.Errorf("workload a (alone, wanting 0.3) got %.3f", ua)
	}
	if ub+uc > 1.0001 || ub+uc < 0.5 || math.Abs(ub-uc) > 0.15 {
		t.Errorf("workloads b and c (0.6 each on one GPU) got %.3f and %.3f: want an even split of at most the whole GPU", ub, uc)
	}
	near(t, "GPU 0 utilization against its workload's share", samples[g0].Utilization, ua)
	near(t, "GPU 1 utilization against its workloads' shares", samples[g1].Utilization, ub+uc)
	if got, want := samples[g1].MemoryUsedBytes, uint64(6144<<20); got != want {
		t.Errorf("GPU 1 memory used = %d, want %d", got, want)
	}
	if got := procs[g1][c.Process.Pid].MemoryBytes; got != 4096<<20 {
		t.Errorf("workload c memory = %d", got)
	}
	if samples[g1].PowerWatts <= samples[g0].PowerWatts || samples[g1].TemperatureCelsius <= samples[g0].TemperatureCelsius {
		t.Errorf("busier GPU is not hotter or hungrier: %+v vs %+v", samples[g1], samples[g0])
	}

	// A paused workload makes no progress and the other gets what it wants.
	if err := c.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	window(t, n, 100*time.Millisecond) // let the window that saw c run pass
	samples, procs = window(t, n, time.Second)
	near(t, "paused workload's share", procs[g1][c.Process.Pid].SMUtilization, 0)
	if ub := procs[g1][b.Process.Pid].SMUtilization; ub > 0.62 || ub < 0.2 {
		t.Errorf("running workload's share with its neighbour paused = %.3f, want up to the 0.6 it asks", ub)
	}
	near(t, "GPU 1 utilization with one workload paused", samples[g1].Utilization, procs[g1][b.Process.Pid].SMUtilization)
	if procs[g1][c.Process.Pid].MemoryBytes != 4096<<20 {
		t.Error("a paused workload no longer holds its memory")
	}
	if err := c.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	window(t, n, 100*time.Millisecond)
	_, procs = window(t, n, time.Second)
	if uc := procs[g1][c.Process.Pid].SMUtilization; uc < 0.15 {
		t.Errorf("resumed workload's share = %.3f: it did not resume", uc)
	}

	// A killed workload disappears, memory and all.
	before := samples[g0].EnergyJoules
	if err := a.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = a.Wait()
	samples, procs = window(t, n, 100*time.Millisecond)
	if len(procs[g0]) != 0 || samples[g0].MemoryUsedBytes != 0 {
		t.Errorf("killed workload still listed: %v, %d bytes used", procs[g0], samples[g0].MemoryUsedBytes)
	}
	if samples[g0].EnergyJoules <= before {
		t.Errorf("energy did not grow: %f then %f", before, samples[g0].EnergyJoules)
	}
}

func TestSampleFaults(t *testing.T) {
	t.Parallel()
	n, _ := New(PresetConfig("A100-40GB", 2))
	devs, _ := n.Devices()
	if s, err := n.Sample(devs[0].UUID); err != nil || s.Utilization != 0 || s.SMClockHertz != 1410e6 {
		t.Errorf("idle sample = %+v, %v", s, err)
	}
	_ = n.Lose(1)
	if _, err := n.Sample(devs[1].UUID); err == nil {
		t.Error("Sample() of a lost GPU succeeded")
	}
	if _, err := n.Processes(devs[1].UUID); err == nil {
		t.Error("Processes() of a lost GPU succeeded")
	}
	_ = n.FailCall(CallSample, true)
	_ = n.FailCall(CallProcesses, true)
	if _, err := n.Sample(devs[0].UUID); err == nil {
		t.Error("Sample() with injected failure succeeded")
	}
	if _, err := n.Processes(devs[0].UUID); err == nil {
		t.Error("Processes() with injected failure succeeded")
	}
	if _, err := n.Sample("GPU-unknown"); err == nil {
		t.Error("Sample() of an unknown GPU succeeded")
	}
}
