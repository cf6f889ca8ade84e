package cgrouptest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// RemoveTree removes the cgroup root and every cgroup below it, bottom-up.
// Each is thawed first (the processes of a frozen cgroup cannot exit), and
// each removal is retried for up to wait while its last processes leave. It
// returns what it could not remove; a root that is already gone is no
// error.
func RemoveTree(root string, wait time.Duration) error {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		// cgroup v2's freeze file; O_WRONLY without O_CREATE, so nothing is
		// created where there is none (a v1 hierarchy).
		if f, err := os.OpenFile(filepath.Join(dirs[i], "cgroup.freeze"), os.O_WRONLY, 0); err == nil {
			_, _ = f.WriteString("0")
			_ = f.Close()
		}
		deadline := time.Now().Add(wait)
		for {
			err := os.Remove(dirs[i])
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}
