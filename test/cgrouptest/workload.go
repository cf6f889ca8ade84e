package cgrouptest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
)

// Workload is a fake GPU workload process (internal/fakegpu/workload) a test
// started in a cgroup, judged by its own record of the GPU time it asked
// for, never through NVML: it asks only while it runs, so frozen it asks
// for none.
type Workload struct {
	// Cmd is the started process.
	Cmd  *exec.Cmd
	dir  string // where the workload publishes its state
	done chan struct{}
}

// StartWorkload starts cmd, a workload publishing its state in dir whose
// process runs in cgroup; at the end of the test the cgroup is thawed (a
// frozen process cannot die) and the process killed.
func StartWorkload(t *testing.T, cmd *exec.Cmd, dir, cgroup string) *Workload {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &Workload{Cmd: cmd, dir: dir, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(w.done) }()
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(cgroup, "cgroup.freeze"), []byte("0"), 0o600)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-w.done
	})
	return w
}

// Exited reports whether the workload ended within d.
func (w *Workload) Exited(d time.Duration) bool {
	select {
	case <-w.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Asked is the GPU time the workload has asked for.
func (w *Workload) Asked(t *testing.T) time.Duration {
	t.Helper()
	path := filepath.Join(w.dir, strconv.Itoa(w.Cmd.Process.Pid)+".json")
	for range 200 {
		var s fakegpu.WorkloadState
		data, err := os.ReadFile(path) //nolint:gosec // the test's own workload directory
		if err == nil && json.Unmarshal(data, &s) == nil {
			return time.Duration(s.RequestedNanos)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("workload never published its state")
	return 0
}

// Share is the share of wall time the workload ran over d.
func (w *Workload) Share(t *testing.T, d time.Duration) float64 {
	t.Helper()
	a0, t0 := w.Asked(t), time.Now()
	time.Sleep(d)
	return float64(w.Asked(t)-a0) / float64(time.Since(t0))
}
