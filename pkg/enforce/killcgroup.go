package enforce

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpuslice/gpuslice/pkg/node"
)

// killRounds bounds the rounds of reading a cgroup tree's processes and
// killing them where the kernel has no cgroup.kill: a process forking in a
// round is killed in the next. Each round waits up to killWait for the
// killed to leave the tree (a process killed stays listed until it has
// exited), so the whole takes at most about a second.
const (
	killRounds = 20
	killWait   = 50 * time.Millisecond
)

// KillCgroup kills every process in a held cgroup and below it: with
// cgroup v2's cgroup.kill where the kernel has it (5.14 and later; atomic
// with respect to forks), else by freezing the cgroup (so nothing in it
// forks), sending SIGKILL to every process its cgroup.procs files list, and
// thawing it (a frozen v1 task dies only once thawed), for up to
// killRounds rounds until none is left.
func KillCgroup(cgroupRoot string, c node.Cgroup) error {
	dirs := cgroupDirs(cgroupRoot, c)
	if len(dirs) == 0 {
		return fmt.Errorf("no cgroup of %s under %s", c.Key(), cgroupRoot)
	}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.kill"), []byte("1"), 0); err == nil {
			return nil
		}
	}
	return killByProcs(dirs[0], c, cgroupRoot)
}

// cgroupDirs are the directories of a held cgroup: its v2 one (the root
// itself on a unified host, <root>/unified on a hybrid one) first, then
// its v1 ones.
func cgroupDirs(cgroupRoot string, c node.Cgroup) []string {
	var dirs []string
	if p, ok := c.Paths[""]; ok {
		for _, mount := range []string{cgroupRoot, filepath.Join(cgroupRoot, "unified")} {
			d := filepath.Join(mount, p)
			if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err == nil {
				dirs = append(dirs, d)
				break
			}
		}
	}
	for _, h := range []string{"pids", "memory", "freezer", "systemd"} {
		p, ok := c.Paths[h]
		if !ok {
			continue
		}
		d := filepath.Join(cgroupRoot, h, p)
		if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err == nil {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// killByProcs kills every process in dir's tree, holding the cgroup frozen
// meanwhile where it has a freezer.
func killByProcs(dir string, c node.Cgroup, cgroupRoot string) error {
	f, ferr := FreezerFor(cgroupRoot, c)
	if ferr == nil {
		if err := f.Freeze(); err != nil {
			ferr = err
		}
	}
	for range killRounds {
		pids, err := treeProcs(dir)
		if err != nil {
			return errors.Join(err, thawIf(f, ferr))
		}
		if len(pids) == 0 {
			return thawIf(f, ferr)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if err := thawIf(f, ferr); err != nil { // let frozen v1 tasks die
			return err
		}
		for waited := time.Duration(0); waited < killWait; waited += 5 * time.Millisecond {
			if left, err := treeProcs(dir); err == nil && len(left) == 0 {
				return nil
			}
			time.Sleep(5 * time.Millisecond)
		}
		if ferr == nil {
			_ = f.Freeze()
		}
	}
	_ = thawIf(f, ferr)
	return fmt.Errorf("processes of %s still alive after %d rounds of SIGKILL", dir, killRounds)
}

func thawIf(f Freezer, ferr error) error {
	if ferr != nil {
		return nil
	}
	return f.Thaw()
}

// treeProcs lists the processes of dir and every cgroup below it.
func treeProcs(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walked
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(filepath.Join(path, "cgroup.procs")) //nolint:gosec // a held cgroup under the operator's root
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids, err
}
