package nvml_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// These tests load a fake libnvidia-ml.so.1 through go-nvml, so they run
// pkg/nvml's real code path. go-nvml binds NVML symbols process-wide, so the
// library is built once and the tests do not run in parallel.

var fakeLib, workloadBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fake-nvml")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if fakeLib, err = fakegpu.BuildNVMLLibrary(dir); err != nil {
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

// fakeNVML is a fake node seen through the fake NVML library.
type fakeNVML struct {
	node  *fakegpu.Node
	state string
}

func newFakeNVML(t *testing.T, cfg fakegpu.Config) *fakeNVML {
	t.Helper()
	node, err := fakegpu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNVML{node: node, state: filepath.Join(t.TempDir(), "nvml-state")}
	f.sync(t)
	t.Setenv(fakegpu.NVMLStateEnv, f.state)
	return f
}

// sync publishes the node's current state to the library.
func (f *fakeNVML) sync(t *testing.T) {
	t.Helper()
	if err := f.node.WriteNVMLState(f.state); err != nil {
		t.Fatal(err)
	}
}

func open(t *testing.T, mod func(*nvml.Options)) *nvml.NVML {
	t.Helper()
	o := nvml.DefaultOptions()
	o.LibraryPath = fakeLib
	o.ProbeInterval = 20 * time.Millisecond
	o.SysfsRoot = t.TempDir() // never the host's own /sys
	if mod != nil {
		mod(&o)
	}
	b, err := nvml.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return b
}

var numa1 = 1

var mixed = fakegpu.Config{GPUs: []fakegpu.GPUConfig{
	{Preset: "A100-40GB"}, {Preset: "H100-80GB", NUMANode: &numa1}, {Preset: "H200-141GB"},
}, DriverVersion: "575.51.03", CUDAVersion: "12.9"}

func TestDevicesAndSystemThroughNVML(t *testing.T) {
	f := newFakeNVML(t, mixed)
	// sysfs knows GPU 1's NUMA node, as on a two-socket machine.
	sysfs := t.TempDir()
	want, _ := f.node.Devices()
	numaFile := filepath.Join(sysfs, "bus", "pci", "devices", strings.ToLower(want[1].PCIBusID[4:]), "numa_node")
	if err := os.MkdirAll(filepath.Dir(numaFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(numaFile, []byte("1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := open(t, func(o *nvml.Options) { o.SysfsRoot = sysfs })
	got, err := b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Devices() through NVML differs from the fake node (-want +got)\n%s", diff)
	}
	sys, err := b.System()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(nvml.SystemInfo{DriverVersion: "575.51.03", CUDADriverVersion: 12090}, sys); diff != "" {
		t.Errorf("System() (-want +got)\n%s", diff)
	}
}

// Two users of NVML in one process: one shutting down leaves the other
// working, as with the real library's reference-counted init.
func TestInitIsReferenceCounted(t *testing.T) {
	newFakeNVML(t, mixed)
	first := open(t, nil)
	o := nvml.DefaultOptions()
	o.LibraryPath, o.SysfsRoot = fakeLib, t.TempDir()
	second, err := nvml.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Devices(); err != nil {
		t.Errorf("Devices() after another user shut NVML down: %v", err)
	}
}

func TestDevicesWithLostGPUAndFailingCalls(t *testing.T) {
	f := newFakeNVML(t, fakegpu.PresetConfig("A100-80GB", 3))
	b := open(t, nil)
	if err := f.node.Lose(1); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	devs, err := b.Devices()
	if len(devs) != 2 || devs[0].Index != 0 || devs[1].Index != 2 {
		t.Errorf("Devices() with GPU 1 lost = %+v, want GPUs 0 and 2", devs)
	}
	var call *nvml.ErrCall
	if !errors.As(err, &call) || call.Call != "nvmlDeviceGetHandleByIndex" || !strings.Contains(err.Error(), "gpu 1") || !strings.Contains(err.Error(), "GPU is lost") {
		t.Errorf("Devices() error = %v, want nvmlDeviceGetHandleByIndex on gpu 1: GPU is lost", err)
	}

	if err := f.node.FailCall(fakegpu.CallDevices, true); err != nil {
		t.Fatal(err)
	}
	if err := f.node.FailCall(fakegpu.CallSystem, true); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	if devs, err := b.Devices(); len(devs) != 0 || !errors.As(err, &call) || call.Call != "nvmlDeviceGetCount" {
		t.Errorf("Devices() with a failing driver = %v, %v", devs, err)
	}
	if _, err := b.System(); !errors.As(err, &call) || call.Call != "nvmlSystemGetDriverVersion" {
		t.Errorf("System() with a failing driver = %v", err)
	}
}

func TestWatchHealthThroughNVML(t *testing.T) {
	f := newFakeNVML(t, mixed)
	b := open(t, func(o *nvml.Options) { o.XIDRecovery = 300 * time.Millisecond })
	devs, _ := f.node.Devices()
	next := watchReports(t, b)
	for i := range devs {
		if h := next("start"); h != (nvml.Health{UUID: devs[i].UUID, Healthy: true}) {
			t.Fatalf("initial report %d = %+v", i, h)
		}
	}

	// An application XID changes nothing; the next report is the loss.
	if err := f.node.InjectXID(0, 13); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	time.Sleep(100 * time.Millisecond)
	if err := f.node.Lose(2); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	if diff := cmp.Diff(nvml.Health{UUID: devs[2].UUID, Reason: nvml.ReasonLost}, next("loss")); diff != "" {
		t.Fatalf("after loss (-want +got)\n%s", diff)
	}
	if err := f.node.Recover(2); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	if diff := cmp.Diff(nvml.Health{UUID: devs[2].UUID, Healthy: true, Reason: nvml.ReasonRecovered}, next("return")); diff != "" {
		t.Fatalf("after return (-want +got)\n%s", diff)
	}

	// A critical XID arrives through the event set; the GPU recovers once
	// no new XID came for the recovery period.
	if err := f.node.InjectXID(1, 79); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	start := time.Now()
	if diff := cmp.Diff(nvml.Health{UUID: devs[1].UUID, Reason: nvml.ReasonXID, XID: 79}, next("xid")); diff != "" {
		t.Fatalf("after XID (-want +got)\n%s", diff)
	}
	if diff := cmp.Diff(nvml.Health{UUID: devs[1].UUID, Healthy: true, Reason: nvml.ReasonRecovered}, next("xid recovery")); diff != "" {
		t.Fatalf("after the quiet period (-want +got)\n%s", diff)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("recovered after %s, before the 300ms quiet period", waited)
	}
}

func TestWatchHealthFailsWithoutEventSet(t *testing.T) {
	f := newFakeNVML(t, fakegpu.PresetConfig("H100-80GB", 1))
	if err := f.node.FailCall(fakegpu.CallWatchHealth, true); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	b := open(t, nil)
	err := b.WatchHealth(context.Background(), func(nvml.Health) {})
	var call *nvml.ErrCall
	if !errors.As(err, &call) || call.Call != "nvmlEventSetCreate" {
		t.Fatalf("WatchHealth() = %v, want an nvmlEventSetCreate error", err)
	}
}

func TestMissingLibrary(t *testing.T) {
	o := nvml.DefaultOptions()
	o.LibraryPath = "/nonexistent/libnvidia-ml.so.1"
	_, err := nvml.New(o)
	if !errors.Is(err, nvml.ErrLibraryNotFound) {
		t.Fatalf("New() = %v, want ErrLibraryNotFound", err)
	}
	for _, want := range []string{"/nonexistent/libnvidia-ml.so.1", "--nvml-library", "--gpu-backend=fake"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestNUMANode(t *testing.T) {
	sysfs := t.TempDir()
	write := func(addr, content string) {
		t.Helper()
		p := filepath.Join(sysfs, "bus", "pci", "devices", addr, "numa_node")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("0000:07:00.0", "0\n")
	write("0000:8a:00.0", "1\n")
	write("0000:0b:00.0", "-1\n")
	write("0000:0c:00.0", "banana\n")
	write("0001:0d:00.0", "3\n")
	tests := map[string]struct {
		busID string
		want  int
	}{
		"nvml 8-digit domain":       {"00000000:07:00.0", 0},
		"upper-case hex":            {"00000000:8A:00.0", 1},
		"4-digit domain":            {"0000:8a:00.0", 1},
		"non-zero domain":           {"00000001:0D:00.0", 3},
		"single-node machine":       {"00000000:0B:00.0", -1},
		"garbage":                   {"00000000:0C:00.0", -1},
		"missing":                   {"00000000:99:00.0", -1},
		"empty":                     {"", -1},
		"path traversal is refused": {"../../../etc/x", -1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := nvml.NUMANode(sysfs, tc.busID); got != tc.want {
				t.Errorf("NUMANode(%q) = %d, want %d", tc.busID, got, tc.want)
			}
		})
	}
}

func TestSampleAndProcessesThroughNVML(t *testing.T) {
	work := t.TempDir()
	f := newFakeNVML(t, fakegpu.Config{Preset: "H100-80GB", Count: 2, WorkloadDir: work})
	b := open(t, nil)
	devs, _ := f.node.Devices()
	g0 := devs[0].UUID
	var pids []int
	for _, w := range []struct {
		mib    int
		demand string
	}{{2048, "0.3"}, {1024, "0.4"}} {
		cmd := exec.Command(workloadBin, "--dir", work, "--gpu", g0, "--memory-mib", fmt.Sprint(w.mib), "--demand", w.demand)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
		pids = append(pids, cmd.Process.Pid)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ps, _ := f.node.Processes(g0)
		if len(ps) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("workloads never appeared")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Read what the driver kept so far, as the agent's first sample does,
	// then a window of one second; the library reports the sample periods
	// that ended in it. The judge is the fake node's own account of the
	// window (a loaded machine slows the workloads, not the reporting).
	f.sync(t)
	if _, err := b.Processes(g0); err != nil {
		t.Fatal(err)
	}
	// The node's count of the GPU time it served each workload, over the
	// window: the truth, cumulative, so no reading of it can be a sliver.
	t0, before := time.Now(), []time.Duration{f.node.Served(pids[0]), f.node.Served(pids[1])}
	time.Sleep(time.Second)
	f.sync(t) // end the window: the library now reports its sample periods
	span := time.Since(t0).Seconds()
	truth := map[int]nvml.Process{}
	served := 0.0
	for i, pid := range pids {
		share := (f.node.Served(pid) - before[i]).Seconds() / span
		truth[pid] = nvml.Process{PID: pid, SMUtilization: share}
		served += share
	}
	tp := []nvml.Process{truth[pids[0]], truth[pids[1]]}

	s, err := b.Sample(g0)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(s.Utilization-served) > 0.05 || s.Utilization < 0.2 || s.MemoryUsedBytes != 3072<<20 || s.SMClockHertz != 1980e6 ||
		s.PowerWatts < 100 || s.EnergyJoules <= 0 || s.TemperatureCelsius < 30 {
		t.Errorf("Sample() through NVML = %+v, want %.2f busy (what the node served), 3 GiB used, 1980 MHz", s, served)
	}
	ps, err := b.Processes(g0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]nvml.Process{}
	for _, p := range ps {
		got[p.PID] = p
	}
	if len(got) != 2 || got[pids[0]].MemoryBytes != 2048<<20 || got[pids[1]].MemoryBytes != 1024<<20 ||
		math.Abs(got[pids[0]].SMUtilization-truth[pids[0]].SMUtilization) > 0.06 || math.Abs(got[pids[1]].SMUtilization-truth[pids[1]].SMUtilization) > 0.06 ||
		got[pids[0]].SMUtilization <= 0 || got[pids[1]].SMUtilization <= 0 {
		t.Errorf("Processes() through NVML = %+v, want pids %v with 2 GiB and 1 GiB and the shares the node served, %+v", ps, pids, tp)
	}
	// No new driver samples since the last call: memory stays, utilization is 0.
	again, err := b.Processes(g0)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range again {
		if p.SMUtilization != 0 || p.MemoryBytes == 0 {
			t.Errorf("second Processes() without new samples = %+v", p)
		}
	}
	if ps, err := b.Processes(devs[1].UUID); err != nil || len(ps) != 0 {
		t.Errorf("idle GPU processes = %v, %v", ps, err)
	}

	_ = f.node.FailCall(fakegpu.CallSample, true)
	_ = f.node.FailCall(fakegpu.CallProcesses, true)
	f.sync(t)
	var call *nvml.ErrCall
	if _, err := b.Sample(g0); !errors.As(err, &call) || call.Call != "nvmlDeviceGetUtilizationRates" {
		t.Errorf("Sample() with a failing driver = %v", err)
	}
	if _, err := b.Processes(g0); !errors.As(err, &call) || call.Call != "nvmlDeviceGetComputeRunningProcesses" {
		t.Errorf("Processes() with a failing driver = %v", err)
	}
	if _, err := b.Sample("GPU-nope"); !errors.As(err, &call) || call.Call != "nvmlDeviceGetHandleByUUID" {
		t.Errorf("Sample() of an unknown GPU = %v", err)
	}
}

func TestPCIClass(t *testing.T) {
	sysfs := t.TempDir()
	dir := filepath.Join(sysfs, "bus", "pci", "devices", "0000:07:00.0")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "class"), []byte("0x030200\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for bus, want := range map[string]string{"00000000:07:00.0": "0x030200", "00000000:08:00.0": "", "../../etc": "", "": ""} {
		if got := nvml.PCIClass(sysfs, bus); got != want {
			t.Errorf("PCIClass(%q) = %q, want %q", bus, got, want)
		}
	}
}

// TestPCIeRoot: the root complex is read from where sysfs links the
// device, whatever its depth under switches; no link, no root.
func TestPCIeRoot(t *testing.T) {
	sysfs := t.TempDir()
	link := func(addr, target string) {
		t.Helper()
		dir := filepath.Join(sysfs, "bus", "pci", "devices")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, addr)); err != nil {
			t.Fatal(err)
		}
	}
	link("0000:07:00.0", "../../../devices/pci0000:00/0000:00:01.0/0000:07:00.0")
	link("0000:8a:00.0", "../../../devices/pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:10.0/0000:8a:00.0")
	link("0000:0b:00.0", "../../../devices/platform/0000:0b:00.0")
	for busID, want := range map[string]string{
		"00000000:07:00.0": "pci0000:00",
		"00000000:8A:00.0": "pci0000:80",
		"00000000:0B:00.0": "",
		"00000000:99:00.0": "",
		"../../etc/x":      "",
	} {
		if got := nvml.PCIeRoot(sysfs, busID); got != want {
			t.Errorf("PCIeRoot(%q) = %q, want %q", busID, got, want)
		}
	}
}

// watchReports runs b's health watch until the test ends and returns a
// function that gives its next report, failing the test when none comes
// within 10 s.
func watchReports(t *testing.T, b *nvml.NVML) func(what string) nvml.Health {
	t.Helper()
	ch := make(chan nvml.Health, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.WatchHealth(ctx, func(h nvml.Health) { ch <- h }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchHealth() = %v", err)
		}
	})
	return func(what string) nvml.Health {
		t.Helper()
		select {
		case h := <-ch:
			return h
		case <-time.After(10 * time.Second):
			t.Fatalf("no health report for %s", what)
		}
		return nvml.Health{}
	}
}
