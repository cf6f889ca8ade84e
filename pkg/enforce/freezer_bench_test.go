package enforce

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/cgrouptest"
)

// BenchmarkFreezerTransitions is the kernel's floor under the throttle: 200
// cgroup v2 cgroups, a sleeping process in each, all frozen and then all
// thawed through control files held open (as the throttle holds them),
// each state held 20 ms so every transition completes. No timers, no
// goroutines: only the writes, batched as tightly as they can be. It
// reports this process's CPU per transition, and what 4,000 transitions a
// second (200 containers, two per 100 ms period) cost at that rate.
func BenchmarkFreezerTransitions(b *testing.B) {
	const n = 200
	base := filepath.Join(cgroupRoot, "unified", fmt.Sprintf("gpuslice-freezer-bench-%d", os.Getpid()))
	if err := os.Mkdir(base, 0o755); err != nil {
		cgrouptest.Skip(b, "cannot create a cgroup in %s: %v", base, err)
	}
	var procs []*exec.Cmd
	var open []*openFreezer
	b.Cleanup(func() {
		for _, f := range open {
			_ = f.Thaw()
			f.Close()
		}
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
		if err := cgrouptest.RemoveTree(base, 5*time.Second); err != nil {
			b.Error(err)
		}
	})
	for i := range n {
		dir := filepath.Join(base, strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		p := exec.Command("sleep", "3600")
		if err := p.Start(); err != nil {
			b.Fatal(err)
		}
		procs = append(procs, p)
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p.Process.Pid)), 0o600); err != nil {
			b.Fatal(err)
		}
		f, err := Freezer{File: filepath.Join(dir, "cgroup.freeze")}.open()
		if err != nil {
			b.Fatal(err)
		}
		open = append(open, f)
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	var spent time.Duration
	for b.Loop() {
		c0 := cpu()
		for _, f := range open {
			if err := f.Freeze(); err != nil {
				b.Fatal(err)
			}
		}
		spent += cpu() - c0
		time.Sleep(20 * time.Millisecond)
		c0 = cpu()
		for _, f := range open {
			if err := f.Thaw(); err != nil {
				b.Fatal(err)
			}
		}
		spent += cpu() - c0
		time.Sleep(20 * time.Millisecond)
	}
	per := float64(spent.Microseconds()) / float64(2*n*b.N)
	b.ReportMetric(per, "cpu-µs/transition")
	b.ReportMetric(per*4000/1e6*100, "cpu-pct-at-4000/s")
}
