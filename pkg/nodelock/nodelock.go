// Package nodelock makes one process of a kind per node: an exclusive
// flock the kernel drops when its holder exits, however it exits.
package nodelock

import (
	"context"
	"fmt"
	"log/slog"
	"os"
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
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600) //nolint:gosec // the operator's state file, plus ".lock"
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
