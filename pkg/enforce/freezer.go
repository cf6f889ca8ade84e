package enforce

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// Freezer freezes and thaws one container's cgroup. It writes the kernel's
// control file and returns at once: the kernel completes the transition
// asynchronously, and a throttle running on a 100 ms period must never wait
// on a cgroup that does not settle (containerd/cgroups' Freeze polls until
// the state is reached, without bound, which is why it is not used here).
type Freezer struct {
	// File is the control file: <cgroup>/cgroup.freeze (v2) or
	// <cgroup>/freezer.state (v1).
	File string
	// Raw, when set, lets a throttle's writes skip the scheduler within
	// its bound (see RawWrites); nil, every write goes through it.
	Raw *RawWrites
	// Owner is the value of the freeze mark: the freezing agent's
	// process ("<pid>/<start time>", see OwnerOf), so that a start-up thaw
	// leaves alone the freezes of an agent still alive. Empty marks "1",
	// which any start-up thaw takes.
	Owner string
}

// RawWrites bounds the freezer writes made as raw system calls, which
// keep their P (the Go scheduler's processor) for as long as the kernel
// holds them: usually microseconds, but as long as cgroup_mutex is held
// elsewhere (a storm of cgroup creation on the node). Past the bound a
// write goes through the scheduler, which hands its P on while the write
// blocks, so blocked writes never take every P and the agent's gRPC,
// probes and SIGTERM thaw keep running.
type RawWrites struct{ slots chan struct{} }

// NewRawWrites allows n raw writes at once; n <= 0 allows none. The
// enforcer uses GOMAXPROCS-1: one P is always left to the rest.
func NewRawWrites(n int) *RawWrites { return &RawWrites{slots: make(chan struct{}, max(n, 0))} }

// take reserves a raw write, or reports that none is free.
func (r *RawWrites) take() bool {
	if r == nil {
		return false
	}
	select {
	case r.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (r *RawWrites) release() { <-r.slots }

// ErrNoFreezer reports a container whose cgroup has no freezer the agent
// can reach.
var ErrNoFreezer = errors.New("no freezer for container")

// FreezerFor finds the container's freezer under cgroupRoot, preferring
// cgroup v2 (the root itself on a unified host, <root>/unified on a hybrid
// one) over the v1 freezer hierarchy.
func FreezerFor(cgroupRoot string, c node.Cgroup) (Freezer, error) {
	var tried []string
	if p, ok := c.Paths[""]; ok {
		for _, mount := range []string{cgroupRoot, filepath.Join(cgroupRoot, "unified")} {
			f := filepath.Join(mount, p, "cgroup.freeze")
			if _, err := os.Stat(f); err == nil {
				return Freezer{File: f}, nil
			}
			tried = append(tried, f)
		}
	}
	if p, ok := c.Paths["freezer"]; ok {
		f := filepath.Join(cgroupRoot, "freezer", p, "freezer.state")
		if _, err := os.Stat(f); err == nil {
			return Freezer{File: f}, nil
		}
		tried = append(tried, f)
	}
	return Freezer{}, fmt.Errorf("%w %s (tried %s)", ErrNoFreezer, c.ContainerID, strings.Join(tried, ", "))
}

func (f Freezer) v2() bool { return filepath.Base(f.File) == "cgroup.freeze" }

// Freeze marks the cgroup as frozen by gpuslice and asks the kernel to
// freeze it.
func (f Freezer) Freeze() error {
	if err := f.mark(); err != nil {
		return err
	}
	v := "FROZEN"
	if f.v2() {
		v = "1"
	}
	return f.write(v)
}

// Thaw asks the kernel to thaw the cgroup and, once it has, removes
// gpuslice's mark.
func (f Freezer) Thaw() error {
	v := "THAWED"
	if f.v2() {
		v = "0"
	}
	if err := f.write(v); err != nil {
		return err
	}
	f.unmark()
	return nil
}

// FreezeMark is the extended attribute gpuslice sets on a cgroup before
// it freezes it and removes once it has thawed it: a freeze of its own is
// known after a restart without its record (a full disk, then SIGKILL),
// and the start-up thaw leaves every other freeze alone (a paused
// container, a checkpoint in progress, another controller). It takes no
// disk space. The user namespace needs no capability, only write access
// to the cgroup, which a tenant has at most to its own subtree.
const FreezeMark = "user.gpuslice.frozen"

// mark sets FreezeMark on the cgroup. A filesystem without user extended
// attributes (cgroup v2 before Linux 5.7) is not an error: the freeze is
// then known from the record alone.
func (f Freezer) mark() error {
	v := f.Owner
	if v == "" {
		v = "1"
	}
	err := unix.Setxattr(filepath.Dir(f.File), FreezeMark, []byte(v), 0)
	switch {
	case err == nil, errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.EOPNOTSUPP):
		return nil
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("mark %s: %w: %w", filepath.Dir(f.File), err, os.ErrNotExist)
	}
	return fmt.Errorf("mark %s: %w", filepath.Dir(f.File), err)
}

// unmark removes FreezeMark; a cgroup without it, or gone, has nothing to
// remove.
func (f Freezer) unmark() { _ = unix.Removexattr(filepath.Dir(f.File), FreezeMark) }

// Marked reports whether the cgroup carries FreezeMark.
func (f Freezer) Marked() bool {
	_, ok := f.markOwner()
	return ok
}

// markOwner is the value of the cgroup's FreezeMark, if it carries one.
func (f Freezer) markOwner() (string, bool) {
	buf := make([]byte, 64)
	n, err := unix.Getxattr(filepath.Dir(f.File), FreezeMark, buf)
	if err != nil {
		return "", false
	}
	return string(buf[:n]), true
}

// OwnerOf is the freeze-mark owner of process pid as procRoot shows it:
// its PID and start time, which no later process with that PID shares.
func OwnerOf(procRoot string, pid int) (string, error) {
	stat, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat")) //nolint:gosec // the operator's --proc-root
	if err != nil {
		return "", err
	}
	start, ok := host.ParseStartTime(stat)
	if !ok {
		return "", fmt.Errorf("no start time for pid %d", pid)
	}
	return fmt.Sprintf("%d/%d", pid, start), nil
}

// alive reports whether the process an owner names still runs: its PID
// exists with the same start time.
func alive(procRoot, owner string) bool {
	pid, _, ok := strings.Cut(owner, "/")
	n, err := strconv.Atoi(pid)
	if !ok || err != nil {
		return false
	}
	now, err := OwnerOf(procRoot, n)
	return err == nil && now == owner
}

func (f Freezer) write(v string) error {
	// O_WRONLY without O_CREATE: a cgroup that vanished is an error, never
	// a stray file.
	file, err := os.OpenFile(f.File, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", f.File, err)
	}
	_, werr := file.WriteString(v)
	cerr := file.Close()
	if errors.Is(werr, syscall.ENODEV) {
		// The cgroup was removed between the open and the write: it is
		// gone, as surely as if the open had failed.
		return fmt.Errorf("write %s to %s: %w: %w", v, f.File, werr, os.ErrNotExist)
	}
	if werr != nil {
		return fmt.Errorf("write %s to %s: %w", v, f.File, werr)
	}
	return cerr
}

// openFreezer is a freezer whose control file stays open, for a throttle
// that writes it twice every period: one write per transition instead of
// an open, a write and a close, each a path walk through cgroupfs.
type openFreezer struct {
	f  Freezer
	fd int
}

// open marks the cgroup (see FreezeMark) and opens the control file for
// writing (never creating it).
func (f Freezer) open() (*openFreezer, error) {
	if err := f.mark(); err != nil {
		return nil, err
	}
	fd, err := unix.Open(f.File, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", f.File, err)
	}
	return &openFreezer{f: f, fd: fd}, nil
}

func (o *openFreezer) Freeze() error {
	if o.f.v2() {
		return o.write("1")
	}
	return o.write("FROZEN")
}

func (o *openFreezer) Thaw() error {
	if o.f.v2() {
		return o.write("0")
	}
	return o.write("THAWED")
}

// write writes v at the start of the control file with a raw pwrite: the
// kernel takes the write and freezes asynchronously, so it returns at once,
// but it wakes the cgroup's tasks, which often preempt the writer. Through
// the runtime's syscall path that preemption made the scheduler hand the
// writer's P to another thread, a futex wake-up per transition; the raw
// call keeps the P and cut the agent's CPU at 200 throttled containers by
// a quarter (docs/benchmarks.md). A write that blocked (cgroup_mutex held
// for long) would hold one P and delay a stop-the-world pause by as long.
//
// Raw writes are bounded by the freezer's RawWrites; past the bound, and
// without one, the write is an ordinary system call the scheduler sees.
func (o *openFreezer) write(v string) error {
	b := []byte(v)
	var errno syscall.Errno
	if o.f.Raw.take() {
		_, _, errno = unix.RawSyscall6(unix.SYS_PWRITE64, uintptr(o.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0) //nolint:gosec // audited: b lives across the call, which reads len(b) bytes
		o.f.Raw.release()
	} else if _, err := unix.Pwrite(o.fd, b, 0); err != nil {
		errno, _ = err.(syscall.Errno) //nolint:errorlint // unix.Pwrite returns a bare Errno
		if errno == 0 {
			return fmt.Errorf("write %s to %s: %w", v, o.f.File, err)
		}
	}
	switch {
	case errno == syscall.ENODEV:
		// The cgroup was removed under the open file: it is gone.
		return fmt.Errorf("write %s to %s: %w: %w", v, o.f.File, errno, os.ErrNotExist)
	case errno != 0:
		return fmt.Errorf("write %s to %s: %w", v, o.f.File, errno)
	}
	return nil
}

func (o *openFreezer) Close() { _ = unix.Close(o.fd) }

// Frozen reports whether the cgroup is frozen or freezing.
func (f Freezer) Frozen() (bool, error) {
	if f.v2() {
		data, err := os.ReadFile(filepath.Join(filepath.Dir(f.File), "cgroup.events"))
		if err != nil {
			return false, err
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "frozen "); ok {
				if strings.TrimSpace(v) == "1" {
					return true, nil
				}
			}
		}
		// cgroup.events lags a write; the requested state answers sooner.
		data, err = os.ReadFile(f.File)
		return strings.TrimSpace(string(data)) == "1", err
	}
	data, err := os.ReadFile(f.File)
	if err != nil {
		return false, err
	}
	s := strings.TrimSpace(string(data))
	return s == "FROZEN" || s == "FREEZING", nil
}
