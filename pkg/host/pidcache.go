package host

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpuslice/gpuslice/pkg/node"
)

// Cgroups resolves GPU processes to their containers sample after sample,
// reading a process's cgroups once and then only when its PID may name
// another process or its answer is older than the recheck period.
//
// Whether a PID still names the process read is known from a pidfd where
// procRoot is the agent's own PID namespace (the host's, in the chart): the
// pidfd refers to one process, and polls readable once it exits, so a PID
// the kernel gives to a new process (a tenant can cycle PIDs) is read
// again at once. Elsewhere the process's start time is compared, read from
// /proc/<pid>/stat each time.
//
// A process that moves between containers needs write access to cgroupfs
// outside its own subtree; the recheck period bounds how long such a move
// goes unseen. Cgroups is not safe for concurrent use.
type Cgroups struct {
	ns       Namespace
	procRoot string
	recheck  time.Duration
	pidfds   bool // procRoot is this process's PID namespace
	entries  map[int]pidEntry
	gen      uint64
	buf      []byte
}

type pidEntry struct {
	fd      int    // a pidfd of the process read, or -1
	start   uint64 // its start time, in clock ticks after boot, when fd is -1
	c       node.Cgroup
	err     error // ErrNotContainer or ErrConflict, which the content decides
	checked time.Time
	gen     uint64 // the Sweep generation that last asked
}

// NewCgroups returns a resolver reading procRoot (the host's /proc) in the
// cgroup namespace ns (the agent's own) that reads a process's cgroups
// again after recheck.
func NewCgroups(ns Namespace, procRoot string, recheck time.Duration) *Cgroups {
	self, err := os.Readlink(filepath.Join(procRoot, "self"))
	return &Cgroups{
		ns: ns, procRoot: procRoot, recheck: recheck, entries: map[int]pidEntry{}, buf: make([]byte, 1024),
		pidfds: err == nil && self == strconv.Itoa(os.Getpid()),
	}
}

// ForPID is ForPID(procRoot, pid), remembered. now is the sample's time.
func (r *Cgroups) ForPID(pid int, now time.Time) (node.Cgroup, error) {
	e, ok := r.entries[pid]
	fresh := ok && now.Sub(e.checked) < r.recheck && !now.Before(e.checked)
	if fresh && e.fd >= 0 && alive(e.fd) {
		e.gen = r.gen
		r.entries[pid] = e
		return e.c, e.err
	}
	if fresh && e.fd < 0 {
		if start, err := r.startTime(pid); err == nil && start == e.start {
			e.gen = r.gen
			r.entries[pid] = e
			return e.c, e.err
		}
	}
	r.forget(pid)
	return r.read(pid, now)
}

// read reads pid's cgroups and remembers the answer. With pidfds the pidfd
// is opened first and must still be alive after the reads: then the PID
// named its process all along, and what was read is that process's.
func (r *Cgroups) read(pid int, now time.Time) (node.Cgroup, error) {
	e := pidEntry{fd: -1, checked: now, gen: r.gen}
	if r.pidfds {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			e.fd = fd
		}
	}
	var err error
	if e.fd < 0 {
		if e.start, err = r.startTime(pid); err != nil {
			return node.Cgroup{}, err
		}
	}
	e.c, e.err = r.ns.ForPID(r.procRoot, pid)
	if e.err != nil && !errors.Is(e.err, ErrNotContainer) && !errors.Is(e.err, ErrConflict) {
		closeFD(e.fd) // exited, or unreadable: ask again next time
		return node.Cgroup{}, e.err
	}
	if e.fd >= 0 && !alive(e.fd) {
		closeFD(e.fd)
		return node.Cgroup{}, fmt.Errorf("pid %d exited while read: %w", pid, fs.ErrNotExist)
	}
	r.entries[pid] = e
	return e.c, e.err
}

// alive reports whether the process a pidfd refers to has not exited: a
// pidfd polls readable once it has.
func alive(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 0
}

func closeFD(fd int) {
	if fd >= 0 {
		_ = unix.Close(fd)
	}
}

func (r *Cgroups) forget(pid int) {
	if e, ok := r.entries[pid]; ok {
		closeFD(e.fd)
		delete(r.entries, pid)
	}
}

// Sweep forgets the processes not asked about since the previous Sweep.
func (r *Cgroups) Sweep() {
	for pid, e := range r.entries {
		if e.gen != r.gen {
			r.forget(pid)
		}
	}
	r.gen++
}

// Close forgets every process and closes their pidfds.
func (r *Cgroups) Close() {
	for pid := range r.entries {
		r.forget(pid)
	}
}

// Len is how many processes are remembered.
func (r *Cgroups) Len() int { return len(r.entries) }

// startTime reads field 22 of /proc/<pid>/stat, into a buffer kept across
// calls.
func (r *Cgroups) startTime(pid int) (uint64, error) {
	path := filepath.Join(r.procRoot, strconv.Itoa(pid), "stat")
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, &fs.PathError{Op: "open", Path: path, Err: err})
	}
	n, err := syscall.Read(fd, r.buf)
	_ = syscall.Close(fd)
	if err != nil {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, &fs.PathError{Op: "read", Path: path, Err: err})
	}
	start, ok := ParseStartTime(r.buf[:max(n, 0)])
	if !ok {
		return 0, fmt.Errorf("pid %d: no start time in %s", pid, path)
	}
	return start, nil
}

// ParseStartTime returns the start time (field 22) of a /proc/<pid>/stat
// line. The command name (field 2) is in parentheses and may itself hold
// spaces and parentheses, so fields are counted after the last ')'.
func ParseStartTime(stat []byte) (uint64, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	fields := bytes.Fields(stat[i+1:])
	const startField = 22 - 3 // fields after the command: state is field 3
	if len(fields) <= startField {
		return 0, false
	}
	v, err := strconv.ParseUint(string(fields[startField]), 10, 64)
	return v, err == nil
}
