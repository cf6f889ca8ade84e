// Package nodelock makes one process of a kind per node: an exclusive
// flock the kernel drops when its holder exits, however it exits.
package nodelock

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// poll is how often a waiting process tries the lock again.
const poll = 200 * time.Millisecond

// Lock takes the node's lock for holder (e.g. "gpu-agent"), an exclusive
// flock on path in a directory every such process on the node shares,
// waiting while another holds it. Two agents must not enforce at once (a
// DaemonSet pod that is force-deleted, or one started by hand beside it,
// would freeze the same cgroups on two schedules and each thaw the
// other's), and two DRA drivers must not prepare claims from one record.
// The kernel drops the lock when its holder exits, however it exits. It
// returns a function releasing the lock, or ctx's error if ctx ends first.
func Lock(ctx context.Context, path, holder string, log *slog.Logger) (func(), error) {
	if err := StateDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("node lock: %w", err)
	}
	// O_NOFOLLOW: a lock file replaced by a link is refused, never
	// followed to wherever it points.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600) //nolint:gosec // the operator's state file, plus ".lock"
	if err != nil {
		return nil, fmt.Errorf("node lock: %w", err)
	}
	waited := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK {
			_ = f.Close()
			return nil, fmt.Errorf("node lock %s: %w", path, err)
		}
		if !waited {
			log.Warn("another process holds this node's lock; waiting for it to stop", "holder", holder, "lock", path)
			waited = true
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, ctx.Err()
		case <-time.After(poll):
		}
	}
	if waited {
		log.Info("node lock taken: the previous holder stopped", "holder", holder, "lock", path)
	}
	return func() { _ = f.Close() }, nil
}

// StateDir makes the daemon's state directory where it does not exist yet
// (a fresh node: 0700, with its parents), and refuses one that is a
// symbolic link, is not a directory, belongs to another user or is
// writable by everyone: the records written there decide what is thawed
// and what is held, so nobody else may plant or swap them.
func StateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("make state directory: %w", err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	switch {
	case st.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("state directory %s is a symbolic link; point the flag at the real directory", dir)
	case !st.IsDir():
		return fmt.Errorf("state directory %s is not a directory", dir)
	case st.Mode().Perm()&0o002 != 0:
		return fmt.Errorf("state directory %s is writable by everyone (%v); make it 0700 or 0755", dir, st.Mode().Perm())
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("state directory %s belongs to uid %d, not this process's %d", dir, sys.Uid, os.Geteuid())
	}
	return nil
}
