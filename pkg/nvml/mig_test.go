package nvml_test

import (
	"context"
	"fmt"
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

var migLayouts = fakegpu.Config{GPUs: []fakegpu.GPUConfig{
	{Preset: "A100-40GB", MIG: fakegpu.MIGConfig{Mode: "enabled", Instances: []fakegpu.MIGInstanceConfig{
		{Profile: "3g.20gb"}, {Profile: "2g.10gb"}, {Profile: "1g.5gb+me"}, {Profile: "1g.5gb"},
	}}},
	{Preset: "H100-80GB"},
	{Preset: "H200-141GB", MIG: fakegpu.MIGConfig{Pending: "enabled"}},
	{Preset: "H200-141GB", MIG: fakegpu.MIGConfig{Mode: "enabled", Pending: "disabled", Instances: []fakegpu.MIGInstanceConfig{{Profile: "7g.141gb"}}}},
}}

// TestMIGThroughNVML: NVML's MIG calls (mode, MIG device handles, their
// attributes and GPU instances) give the agent the same GPUs, modes and
// instances as the fake node holds, profile names and capability minors
// included; a layout changed at run time is read anew.
func TestMIGThroughNVML(t *testing.T) {
	f := newFakeNVML(t, migLayouts)
	minors := filepath.Join(t.TempDir(), "mig-minors")
	if err := os.WriteFile(minors, []byte(fakegpu.MIGMinorsFile(4)), 0o600); err != nil {
		t.Fatal(err)
	}
	b := open(t, func(o *nvml.Options) { o.MIGMinorsFile = minors })
	want, _ := f.node.Devices()
	got, err := b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Devices() through NVML differs from the fake node (-want +got)\n%s", diff)
	}
	var names []string
	for _, in := range got[0].MIG.Instances {
		names = append(names, in.Profile)
	}
	if d := cmp.Diff([]string{"3g.20gb", "2g.10gb", "1g.5gb+me", "1g.5gb"}, names); d != "" {
		t.Errorf("profiles (-want +got):\n%s", d)
	}
	if !got[2].MIG.Pending || got[2].MIG.Current || !got[3].MIG.Current || got[3].MIG.Pending {
		t.Errorf("modes: %+v, %+v", got[2].MIG, got[3].MIG)
	}

	if err := f.node.SetMIG(0, fakegpu.MIGConfig{Mode: "enabled", Instances: []fakegpu.MIGInstanceConfig{{Profile: "7g.40gb"}}}); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	got, err = b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if in := got[0].MIG.Instances; len(in) != 1 || in[0].Profile != "7g.40gb" {
		t.Errorf("after the layout change: %+v", in)
	}
}

// Without the driver's mig-minors list the instances are still read, with
// their capability minors unknown.
func TestMIGWithoutMinors(t *testing.T) {
	newFakeNVML(t, migLayouts)
	b := open(t, func(o *nvml.Options) { o.MIGMinorsFile = filepath.Join(t.TempDir(), "absent") })
	got, err := b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range got[0].MIG.Instances {
		if in.GICapMinor != -1 || in.CICapMinor != -1 {
			t.Errorf("%s: cap minors %d/%d, want -1", in.UUID, in.GICapMinor, in.CICapMinor)
		}
	}
	if len(got[0].MIG.Instances) != 4 {
		t.Errorf("%d instances, want 4", len(got[0].MIG.Instances))
	}
}

func TestParseMIGMinors(t *testing.T) {
	t.Parallel()
	m, err := nvml.ParseMIGMinors([]byte(fakegpu.MIGMinorsFile(1)))
	if err != nil {
		t.Fatal(err)
	}
	if m["config"] != 1 || m["gpu0/gi1/ci0/access"] != 13 {
		t.Errorf("minors: config %d, gpu0/gi1/ci0 %d", m["config"], m["gpu0/gi1/ci0/access"])
	}
	for _, bad := range []string{"", "config\n", "config one\n", "config -1\n", "a b c\n", "config 99999999999\n"} {
		if _, err := nvml.ParseMIGMinors([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseMIGMinors(f *testing.F) {
	f.Add([]byte(fakegpu.MIGMinorsFile(1)))
	f.Add([]byte("config 1\nmonitor 2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := nvml.ParseMIGMinors(data)
		if err != nil {
			return
		}
		for k, v := range m {
			if k == "" || strings.ContainsAny(k, " \t\n") || v < 0 {
				t.Fatalf("parsed %q -> %d", k, v)
			}
		}
	})
}

// TestXIDOnOneMIGInstanceThroughNVML: an XID the driver puts on one GPU
// instance (the event names it) makes that instance unhealthy, not its
// GPU, and it recovers after the quiet period as a GPU does; an XID on the
// GPU is the GPU's.
func TestXIDOnOneMIGInstanceThroughNVML(t *testing.T) {
	f := newFakeNVML(t, migLayouts)
	b := open(t, func(o *nvml.Options) { o.XIDRecovery = 300 * time.Millisecond })
	devs, _ := f.node.Devices()
	next := watchReports(t, b)
	for range devs {
		next("start")
	}
	target := devs[0].MIG.Instances[1] // the 2g.10gb
	if err := f.node.InjectInstanceXID(0, target.GPUInstanceID, 94); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	start := time.Now()
	if diff := cmp.Diff(nvml.Health{UUID: target.UUID, Parent: devs[0].UUID, Reason: nvml.ReasonXID, XID: 94}, next("instance xid")); diff != "" {
		t.Fatalf("after the instance's XID (-want +got)\n%s", diff)
	}
	if diff := cmp.Diff(nvml.Health{UUID: target.UUID, Parent: devs[0].UUID, Healthy: true, Reason: nvml.ReasonRecovered}, next("instance recovery")); diff != "" {
		t.Fatalf("after the quiet period (-want +got)\n%s", diff)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("recovered after %s, before the 300ms quiet period", waited)
	}
	// The GPU itself: every instance's.
	if err := f.node.InjectXID(0, 79); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	if diff := cmp.Diff(nvml.Health{UUID: devs[0].UUID, Reason: nvml.ReasonXID, XID: 79}, next("gpu xid")); diff != "" {
		t.Fatalf("after the GPU's XID (-want +got)\n%s", diff)
	}
}

// TestXIDOnOneMIGInstanceInProcess: the in-process fake reports the same.
func TestXIDOnOneMIGInstanceInProcess(t *testing.T) {
	t.Parallel()
	n, err := fakegpu.New(migLayouts)
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := n.Devices()
	target := devs[0].MIG.Instances[2]
	if err := n.InjectInstanceXID(0, target.GPUInstanceID, 94); err != nil {
		t.Fatal(err)
	}
	if err := n.InjectInstanceXID(1, 1, 94); err == nil {
		t.Error("an XID on an instance of a GPU not in MIG mode was accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got []nvml.Health
	go func() { time.Sleep(200 * time.Millisecond); cancel() }()
	_ = n.WatchHealth(ctx, func(h nvml.Health) { got = append(got, h) })
	for _, h := range got {
		switch {
		case h.UUID == target.UUID && (h.Healthy || h.XID != 94 || h.Parent != devs[0].UUID):
			t.Errorf("the instance: %+v, want unhealthy with XID 94", h)
		case h.UUID != target.UUID && !h.Healthy:
			t.Errorf("%+v is unhealthy; only %s should be", h, target.UUID)
		}
	}
}

// TestMIGInstanceProcessesThroughNVML: a MIG instance is read as a device
// of its own through NVML: its handle by its MIG UUID, its memory and its
// processes (only its own: not its GPU's other instances', and none on
// the GPU itself), and no utilization, which the driver does not sample on
// MIG (NOT_SUPPORTED): the sample says its compute is unmeasured rather
// than idle. A destroyed instance is no longer found, even by a UUID read
// before.
func TestMIGInstanceProcessesThroughNVML(t *testing.T) {
	work := t.TempDir()
	cfg := migLayouts
	cfg.WorkloadDir = work
	f := newFakeNVML(t, cfg)
	b := open(t, nil)
	devs, _ := f.node.Devices()
	a, c := devs[0].MIG.Instances[0], devs[0].MIG.Instances[3]
	pids := map[string]int{}
	for _, w := range []struct {
		uuid string
		mib  int
	}{{a.UUID, 3072}, {c.UUID, 1024}} {
		cmd := exec.Command(workloadBin, "--dir", work, "--gpu", w.uuid, "--memory-mib", fmt.Sprint(w.mib), "--demand", "0.5")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
		pids[w.uuid] = cmd.Process.Pid
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pa, _ := f.node.Processes(a.UUID)
		pc, _ := f.node.Processes(c.UUID)
		if len(pa) == 1 && len(pc) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("workloads never appeared on their instances")
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.sync(t)
	for uuid, mib := range map[string]uint64{a.UUID: 3072, c.UUID: 1024} {
		ps, err := b.Processes(uuid)
		if err != nil {
			t.Fatalf("Processes(%s): %v", uuid, err)
		}
		if len(ps) != 1 || ps[0].PID != pids[uuid] || ps[0].MemoryBytes != mib<<20 || ps[0].SMUtilization != 0 {
			t.Errorf("Processes(%s) = %+v, want pid %d with %d MiB and no utilization", uuid, ps, pids[uuid], mib)
		}
		s, err := b.Sample(uuid)
		if err != nil {
			t.Fatalf("Sample(%s): %v", uuid, err)
		}
		if !s.ProcessUtilizationUnsupported || !s.UtilizationUnsupported || s.MemoryUsedBytes != mib<<20 || s.Utilization != 0 {
			t.Errorf("Sample(%s) = %+v, want %d MiB used and compute unmeasured (an A100 has no GPM)", uuid, s, mib)
		}
	}
	if ps, err := b.Processes(devs[0].MIG.Instances[1].UUID); err != nil || len(ps) != 0 {
		t.Errorf("an idle instance lists %+v, %v", ps, err)
	}
	if ps, err := b.Processes(devs[0].UUID); err != nil || len(ps) != 0 {
		t.Errorf("the GPU in MIG mode lists %+v, %v: its processes are its instances'", ps, err)
	}
	if s, err := b.Sample(devs[1].UUID); err != nil || s.ProcessUtilizationUnsupported || s.UtilizationUnsupported {
		t.Errorf("a whole GPU: %+v, %v: its compute is measured", s, err)
	}

	// The layout changes: the instance with the workload is destroyed.
	if err := f.node.SetMIG(0, fakegpu.MIGConfig{Mode: "enabled", Instances: []fakegpu.MIGInstanceConfig{{Profile: "2g.10gb"}, {Profile: "1g.5gb"}}}); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	if _, err := b.Sample(a.UUID); err == nil {
		t.Errorf("Sample of a destroyed instance succeeded")
	}
}

// TestMIGInstanceGPMThroughNVML: on Hopper, GPM measures a MIG instance's
// SM utilization, which NVML's utilization calls do not: over the
// interval between two samples of the instance's counters. The judge is
// the GPU time the fake node served the instance's workload over the same
// interval (its own count of work done, which no NVML reading feeds). The
// first sample measures nothing, and says so.
func TestMIGInstanceGPMThroughNVML(t *testing.T) {
	work := t.TempDir()
	f := newFakeNVML(t, fakegpu.Config{WorkloadDir: work, GPUs: []fakegpu.GPUConfig{
		{Preset: "H100-80GB", MIG: fakegpu.MIGConfig{Mode: "enabled", Instances: []fakegpu.MIGInstanceConfig{{Profile: "3g.40gb"}, {Profile: "1g.10gb"}}}},
	}})
	b := open(t, nil)
	devs, _ := f.node.Devices()
	busy, idle := devs[0].MIG.Instances[0].UUID, devs[0].MIG.Instances[1].UUID
	cmd := exec.Command(workloadBin, "--dir", work, "--gpu", busy, "--memory-mib", "512", "--demand", "0.4")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for f.node.Served(cmd.Process.Pid) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the workload was never served")
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.sync(t)
	s0, err := b.Sample(busy)
	if err != nil {
		t.Fatal(err)
	}
	if !s0.UtilizationUnsupported || !s0.ProcessUtilizationUnsupported {
		t.Errorf("first sample %+v: one GPM sample measures nothing, and must say so", s0)
	}
	if _, err := b.Sample(idle); err != nil {
		t.Fatal(err)
	}
	served0, t0 := f.node.Served(cmd.Process.Pid), time.Now()
	time.Sleep(time.Second)
	f.sync(t)
	served1, t1 := f.node.Served(cmd.Process.Pid), time.Now()
	s1, err := b.Sample(busy)
	if err != nil {
		t.Fatal(err)
	}
	truth := float64(served1-served0) / float64(t1.Sub(t0))
	if s1.UtilizationUnsupported || !s1.ProcessUtilizationUnsupported || s1.Utilization <= 0 || s1.Utilization > 0.45 || (truth > 0 && (s1.Utilization/truth < 0.7 || s1.Utilization/truth > 1.3)) {
		t.Errorf("GPM SM utilization %+v, want the served share %.3f (demand 0.4)", s1, truth)
	}
	si, err := b.Sample(idle)
	if err != nil || si.UtilizationUnsupported || si.Utilization != 0 {
		t.Errorf("the idle instance: %+v, %v; want measured at 0", si, err)
	}
}

// TestProcessMemoryNotAvailable: a process memory the driver withholds
// (NVML_VALUE_NOT_AVAILABLE, as some drivers report on MIG without enough
// privilege) fails the read, leaving the device blind for the sample,
// rather than reporting 16 EiB that the memory watchdog would kill for.
func TestProcessMemoryNotAvailable(t *testing.T) {
	f := newFakeNVML(t, fakegpu.Config{Preset: "H100-80GB", Count: 1})
	b := open(t, nil)
	devs, _ := f.node.Devices()
	f.sync(t)
	data, err := os.ReadFile(f.state)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.state+".tmp", append(data, []byte("proc\t0\t4242\t18446744073709551615\t0\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(f.state+".tmp", f.state); err != nil {
		t.Fatal(err)
	}
	ps, err := b.Processes(devs[0].UUID)
	if err == nil || !strings.Contains(err.Error(), "not available") {
		t.Errorf("Processes() = %+v, %v; want the read to fail", ps, err)
	}
}
