package nvml_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
)

// v2Cgroup creates a cgroup of the test's own in the cgroup v2 hierarchy.
func v2Cgroup(t *testing.T) string {
	t.Helper()
	root := "/sys/fs/cgroup/unified"
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		root = "/sys/fs/cgroup"
	}
	dir := filepath.Join(root, fmt.Sprintf("gpuslice-nvml-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		cgrouptest.Skip(t, "cannot create a cgroup v2 cgroup: %v", err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for os.Remove(dir) != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	})
	return dir
}

func TestMemoryLimitsThroughNVML(t *testing.T) {
	work := t.TempDir()
	f := newFakeNVML(t, fakegpu.Config{Preset: "A100-40GB", Count: 2, WorkloadDir: work, DriverMemoryLimits: true})
	b := open(t, nil)
	devs, _ := f.node.Devices()
	g0 := devs[0].UUID
	dir := v2Cgroup(t)

	if err := b.MemoryLimitsSupported(dir); err != nil {
		t.Fatalf("MemoryLimitsSupported() = %v", err)
	}
	l, err := b.MemoryLimits(g0, dir)
	if err != nil || l.SoftBytes != 0 || l.HardBytes != nvml.NoMemoryLimit {
		t.Fatalf("MemoryLimits() before any = %+v, %v; want none", l, err)
	}
	if err := b.SetMemoryLimits(g0, dir, 4<<30, 4<<30); err != nil {
		t.Fatal(err)
	}
	// A process in the cgroup holding 1 GiB is counted as its use.
	cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir, workloadBin, "--dir", work, "--gpu", g0, "--memory-mib", "1024")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGKILL); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(work, strconv.Itoa(cmd.Process.Pid)+".json")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("workload never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	f.sync(t)
	l, err = b.MemoryLimits(g0, dir)
	if err != nil || l.SoftBytes != 4<<30 || l.HardBytes != 4<<30 || l.UsedBytes != 1<<30 {
		t.Errorf("MemoryLimits() = %+v, %v; want 4 GiB soft and hard, 1 GiB used", l, err)
	}
	// The other GPU is not limited.
	if l, err := b.MemoryLimits(devs[1].UUID, dir); err != nil || l.HardBytes != nvml.NoMemoryLimit {
		t.Errorf("MemoryLimits() of GPU 1 = %+v, %v", l, err)
	}
	// The node reads limits set through the library: the driver is one.
	if err := f.node.WriteNVMLState(f.state); err != nil {
		t.Fatal(err)
	}
	if l, err := f.node.MemoryLimits(g0, dir); err != nil || l.HardBytes != 4<<30 {
		t.Errorf("node's MemoryLimits() = %+v, %v", l, err)
	}

	var call *nvml.ErrCall
	if err := b.SetMemoryLimits(g0, dir, 5<<30, 4<<30); !errors.As(err, &call) || call.Call != "nvmlDeviceSetMemoryLimits_v1" {
		t.Errorf("soft above hard = %v, want an nvmlDeviceSetMemoryLimits_v1 error", err)
	}
	if err := b.SetMemoryLimits(g0, filepath.Join(dir, "nope"), 1, 1); err == nil {
		t.Error("a limit on a cgroup that does not exist was accepted")
	}
	if err := b.SetMemoryLimits("GPU-nope", dir, 1, 1); err == nil {
		t.Error("a limit on an unknown GPU was accepted")
	}
	// Cleared: soft 0, no hard limit.
	if err := b.SetMemoryLimits(g0, dir, 0, nvml.NoMemoryLimit); err != nil {
		t.Fatal(err)
	}
	if l, err := b.MemoryLimits(g0, dir); err != nil || l.HardBytes != nvml.NoMemoryLimit || l.SoftBytes != 0 {
		t.Errorf("MemoryLimits() after clearing = %+v, %v", l, err)
	}
}

func TestMemoryLimitsUnsupportedThroughNVML(t *testing.T) {
	newFakeNVML(t, fakegpu.Config{Preset: "A100-40GB", Count: 1})
	b := open(t, nil)
	dir := v2Cgroup(t)
	err := b.MemoryLimitsSupported(dir)
	if !errors.Is(err, nvml.ErrNotSupported) {
		t.Fatalf("MemoryLimitsSupported() on a driver without limits = %v, want ErrNotSupported", err)
	}
	devs, _ := b.Devices()
	if err := b.SetMemoryLimits(devs[0].UUID, dir, 1, 1); !errors.Is(err, nvml.ErrNotSupported) {
		t.Errorf("SetMemoryLimits() = %v, want ErrNotSupported", err)
	}
}
