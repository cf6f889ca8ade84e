package host_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/host"
)

const (
	uidA = "11111111-1111-1111-1111-111111111111"
	uidB = "22222222-2222-2222-2222-222222222222"
)

// fakeProc writes /proc/<pid>/stat and /proc/<pid>/cgroup for a process
// started at start in pod uid's container cid.
func fakeProc(t *testing.T, root string, pid int, start uint64, uid, cid string) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprint(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A command name with spaces and parentheses, as a tenant may choose.
	stat := fmt.Sprintf("%d (evil) 1 2 3) S 1 %d 0 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 %d 1000 10 0\n", pid, pid, start)
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o600); err != nil {
		t.Fatal(err)
	}
	cg := fmt.Sprintf("0::/kubepods/burstable/pod%s/%s\n", uid, cid)
	if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestParseStartTime(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		want uint64
		ok   bool
	}{
		"plain":             {"42 (python3) S 1 42 42 0 -1 4194560 100 0 0 0 5 1 0 0 20 0 3 0 987654 1000 10 0", 987654, true},
		"parens in command": {"42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 5 1 0 0 20 0 3 0 5 1000 10 0", 5, true},
		"no command":        {"42 python3 S 1", 0, false},
		"too short":         {"42 (x) S 1 2 3", 0, false},
		"not a number":      {"42 (x) S 1 42 42 0 -1 4194560 100 0 0 0 5 1 0 0 20 0 3 0 later 1000", 0, false},
		"empty":             {"", 0, false},
	} {
		t.Run(name, func(t *testing.T) {
			got, ok := host.ParseStartTime([]byte(tc.in))
			if got != tc.want || ok != tc.ok {
				t.Errorf("ParseStartTime(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func FuzzParseStartTime(f *testing.F) {
	f.Add([]byte("42 (python3) S 1 42 42 0 -1 4194560 100 0 0 0 5 1 0 0 20 0 3 0 987654 1000 10 0"))
	f.Add([]byte(") ) )"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if v, ok := host.ParseStartTime(b); !ok && v != 0 {
			t.Errorf("ParseStartTime(%q) = %d without ok", b, v)
		}
	})
}

// TestCgroupsRemembersByPIDAndStartTime: the cache answers from memory
// only for the same process. A PID the kernel gave to a new process (a
// tenant can cycle PIDs) is read again at once, in the same sample, so a
// reused PID is never attributed to the container of the process that had
// it before; a process moved between containers (needs cgroupfs write
// access outside its subtree) is seen within the recheck period.
func TestCgroupsRemembersByPIDAndStartTime(t *testing.T) {
	root := t.TempDir()
	cidA, cidB := repeat('a'), repeat('b')
	fakeProc(t, root, 100, 5000, uidA, cidA)
	r := host.NewCgroups(host.RootNamespace(), root, 10*time.Second)
	t0 := time.Unix(1000, 0)
	want := func(now time.Time, uid string) {
		t.Helper()
		c, err := r.ForPID(100, now)
		if err != nil || c.PodUID != uid {
			t.Fatalf("ForPID at %s = %+v, %v; want pod %s", now.Sub(t0), c, err, uid)
		}
	}
	want(t0, uidA)

	// The same process, its cgroup file rewritten behind the cache's back:
	// answered from memory until the recheck period is over.
	fakeProc(t, root, 100, 5000, uidB, cidB)
	want(t0.Add(5*time.Second), uidA)
	want(t0.Add(10*time.Second), uidB)

	// PID 100 reused by a process of pod A: another start time, read at once.
	fakeProc(t, root, 100, 7000, uidA, cidA)
	want(t0.Add(11*time.Second), uidA)

	// A clock that went back reads again rather than trusting the future.
	fakeProc(t, root, 100, 7000, uidB, cidB)
	want(t0, uidB)
}

func TestCgroupsForgetsExitedAndUnseen(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, 100, 1, uidA, repeat('a'))
	fakeProc(t, root, 200, 1, uidB, repeat('b'))
	r := host.NewCgroups(host.RootNamespace(), root, time.Minute)
	now := time.Unix(1000, 0)
	for _, pid := range []int{100, 200} {
		if _, err := r.ForPID(pid, now); err != nil {
			t.Fatal(err)
		}
	}
	r.Sweep()
	if r.Len() != 2 {
		t.Fatalf("remembered %d after a sweep of a sample that asked for both, want 2", r.Len())
	}
	// Only 200 is asked for; then 100 exits: the next sweep forgets it.
	if _, err := r.ForPID(200, now); err != nil {
		t.Fatal(err)
	}
	r.Sweep()
	if r.Len() != 1 {
		t.Errorf("remembered %d after a sample without pid 100, want 1", r.Len())
	}
	if err := os.RemoveAll(filepath.Join(root, "200")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ForPID(200, now); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ForPID of an exited process = %v, want fs.ErrNotExist", err)
	}
	if r.Len() != 0 {
		t.Errorf("remembered %d after pid 200 exited, want 0", r.Len())
	}
}

// TestCgroupsRemembersConflicts: a process whose cgroups name two
// containers is reported as such from memory too, not as attributed.
func TestCgroupsRemembersConflicts(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, 100, 1, uidA, repeat('a'))
	conflict := fmt.Sprintf("4:memory:/kubepods/pod%s/%s\n0::/kubepods/burstable/pod%s/%s\n", uidA, repeat('a'), uidB, repeat('b'))
	if err := os.WriteFile(filepath.Join(root, "100", "cgroup"), []byte(conflict), 0o600); err != nil {
		t.Fatal(err)
	}
	r := host.NewCgroups(host.RootNamespace(), root, time.Minute)
	for i := range 2 {
		if _, err := r.ForPID(100, time.Unix(int64(1000+i), 0)); !errors.Is(err, host.ErrConflict) {
			t.Fatalf("ForPID #%d = %v, want ErrConflict", i, err)
		}
	}
}

func repeat(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}
