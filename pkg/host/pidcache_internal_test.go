package host

import (
	"errors"
	"io/fs"
	"os/exec"
	"testing"
	"time"
)

// TestCgroupsFollowsTheProcessByPidfd: on the agent's own /proc, a process
// is followed by a pidfd. While it lives its answer is remembered; once it
// exits the remembered answer is not used, even within the recheck
// period, so a PID the kernel hands to a new process is never answered
// for with the old one's container.
func TestCgroupsFollowsTheProcessByPidfd(t *testing.T) {
	r := NewCgroups(RootNamespace(), "/proc", time.Hour)
	defer r.Close()
	if !r.pidfds {
		t.Fatal("/proc is this process's PID namespace, but pidfds are not used")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	now := time.Now()
	_, first := r.ForPID(pid, now)
	if first != nil && !errors.Is(first, ErrNotContainer) {
		t.Fatalf("ForPID(sleep) = %v", first)
	}
	if e, ok := r.entries[pid]; !ok || e.fd < 0 {
		t.Fatalf("entry %+v, %v: want one holding a pidfd", e, ok)
	}
	if _, err := r.ForPID(pid, now.Add(time.Minute)); (err == nil) != (first == nil) {
		t.Fatalf("remembered answer = %v, want %v", err, first)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if _, err := r.ForPID(pid, now.Add(2*time.Minute)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ForPID of the exited process within the recheck period = %v, want fs.ErrNotExist", err)
	}
	if r.Len() != 0 {
		t.Errorf("%d processes remembered after the only one exited", r.Len())
	}
}

// TestCgroupsWithoutPidfds: a /proc of another PID namespace (or a test's
// fake) compares start times instead.
func TestCgroupsWithoutPidfds(t *testing.T) {
	if r := NewCgroups(RootNamespace(), t.TempDir(), time.Hour); r.pidfds {
		t.Error("pidfds used for a /proc that is not this process's")
	}
}
