package enforce

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"
)

// nodeLockPoll is how often a waiting agent tries the node lock again.
const nodeLockPoll = 200 * time.Millisecond

// LockNode takes the node's agent lock, an exclusive flock on path (the
// enforcement record's directory is shared by every agent on the node),
// waiting while another agent holds it. Two agents must not enforce at
// once: a DaemonSet pod that is force-deleted, or one started by hand
// beside it, would freeze the same cgroups on two schedules and each thaw
// the other's. The kernel drops the lock when its holder exits, however it
// exits. It returns a function releasing the lock, or ctx's error if ctx
// ends first.
func LockNode(ctx context.Context, path string, log *slog.Logger) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600) //nolint:gosec // the operator's --enforcement-state, plus ".lock"
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
			log.Warn("another gpu-agent holds this node's lock; waiting for it to stop", "lock", path)
			waited = true
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, ctx.Err()
		case <-time.After(nodeLockPoll):
		}
	}
	if waited {
		log.Info("node lock taken: the previous gpu-agent stopped", "lock", path)
	}
	return func() { _ = f.Close() }, nil
}
