package cluster

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ReapStale cleans up after runs whose test binary died without stopping
// its cluster (killed, or a panic in a test): it kills the processes the
// run recorded, the containerd shims serving its socket and the processes
// of its pods (the kubelet's kubepods cgroups), then removes its mounts,
// cgroups and directory. A run whose test binary still lives is left
// alone. Each process is checked against the run's directory before it is
// killed, so a reused PID is never hit.
func ReapStale(log func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "gpuslice-e2e-*"))
	var stale []string
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, "owner.pid")) //nolint:gosec // a run dir of the tier's own
		if err != nil {
			continue // a binaries dir, or not ours
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && alive(pid) {
			continue
		}
		stale = append(stale, dir)
	}
	if len(stale) == 0 {
		return
	}
	for _, dir := range stale {
		log("reaping the cluster a killed run left in %s", dir)
		data, _ := os.ReadFile(filepath.Join(dir, "pids")) //nolint:gosec // a run dir of the tier's own
		for f := range strings.FieldsSeq(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && cmdlineMentions(pid, dir) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		procs, _ := filepath.Glob("/proc/[0-9]*")
		for _, p := range procs {
			pid, _ := strconv.Atoi(filepath.Base(p))
			if cmdlineMentions(pid, filepath.Join(dir, "containerd")) {
				_ = syscall.Kill(pid, syscall.SIGKILL) // shims
			}
		}
	}
	// The pods' processes: only this tier's kubelets create kubepods here.
	killCgroupTree("/sys/fs/cgroup/pids/kubepods")
	killCgroupTree("/sys/fs/cgroup/unified/kubepods")
	for _, dir := range stale {
		if _, err := os.Stat(filepath.Join(dir, multiMarker)); err == nil {
			reapMulti()
		}
		unmountUnder(dir)
		_ = os.RemoveAll(dir)
	}
	removeRunContainerd()
	RemoveKubepodsCgroups()
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func cmdlineMentions(pid int, s string) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return err == nil && bytes.Contains(data, []byte(s))
}

// killCgroupTree kills every process in a cgroup tree.
func killCgroupTree(root string) {
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil //nolint:nilerr // a cgroup gone while walking
		}
		data, _ := os.ReadFile(p) //nolint:gosec // a cgroup file
		for f := range strings.FieldsSeq(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return nil
	})
}
