package attribution

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Cgroups resolves GPU processes to their containers sample after sample,
// reading a process's cgroups once and then only when its PID names another
// process (another start time: the PID was reused) or its answer is older
// than the recheck period. A process that moves between containers needs
// write access to cgroupfs outside its own subtree; Recheck bounds how long
// such a move goes unseen. It is not safe for concurrent use.
type Cgroups struct {
	procRoot string
	recheck  time.Duration
	entries  map[int]pidEntry
	gen      uint64
	buf      []byte
}

type pidEntry struct {
	start   uint64 // the process's start time, in clock ticks after boot
	c       Container
	err     error // ErrNotContainer or ErrConflict, which the content decides
	checked time.Time
	gen     uint64 // the Sweep generation that last asked
}

// NewCgroups returns a resolver reading procRoot (the host's /proc) that
// reads a process's cgroups again after recheck.
func NewCgroups(procRoot string, recheck time.Duration) *Cgroups {
	return &Cgroups{procRoot: procRoot, recheck: recheck, entries: map[int]pidEntry{}, buf: make([]byte, 1024)}
}

// ForPID is ForPID(procRoot, pid), remembered. now is the sample's time.
func (r *Cgroups) ForPID(pid int, now time.Time) (Container, error) {
	start, err := r.startTime(pid)
	if err != nil {
		delete(r.entries, pid)
		return Container{}, err
	}
	if e, ok := r.entries[pid]; ok && e.start == start && now.Sub(e.checked) < r.recheck && !now.Before(e.checked) {
		e.gen = r.gen
		r.entries[pid] = e
		return e.c, e.err
	}
	c, err := ForPID(r.procRoot, pid)
	if err != nil && !errors.Is(err, ErrNotContainer) && !errors.Is(err, ErrConflict) {
		delete(r.entries, pid) // exited, or unreadable: ask again next time
		return Container{}, err
	}
	r.entries[pid] = pidEntry{start: start, c: c, err: err, checked: now, gen: r.gen}
	return c, err
}

// Sweep forgets the processes not asked about since the previous Sweep.
func (r *Cgroups) Sweep() {
	for pid, e := range r.entries {
		if e.gen != r.gen {
			delete(r.entries, pid)
		}
	}
	r.gen++
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
