package enforce

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
)

// TestKillCgroupWithoutCgroupKill: the way kept for kernels without
// cgroup.kill (and v1 hierarchies) kills a tree of processes that keeps
// forking, children in a subtree included, and leaves the cgroup thawed.
func TestKillCgroupWithoutCgroupKill(t *testing.T) {
	t.Parallel()
	const root = "/sys/fs/cgroup"
	rel := fmt.Sprintf("/gpuslice-killcgroup-test-%d", os.Getpid())
	dir := filepath.Join(root, "unified", rel)
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o750); err != nil {
		cgrouptest.Skip(t, "cannot create cgroups under %s/unified: %v", root, err)
	}
	t.Cleanup(func() {
		if err := cgrouptest.RemoveTree(dir, 10*time.Second); err != nil {
			t.Error(err)
		}
	})
	var cmds []*exec.Cmd
	for _, d := range []string{dir, filepath.Join(dir, "sub")} {
		cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && while :; do sleep 0.01 & sleep 0.02; done`, d)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	exited := make(chan error, len(cmds))
	for _, c := range cmds {
		go func() { exited <- c.Wait() }()
	}
	time.Sleep(300 * time.Millisecond)
	c := node.Cgroup{Paths: map[string]string{"": rel}}
	if err := killByProcs(dir, c, root); err != nil {
		t.Fatal(err)
	}
	for range cmds {
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Fatal("a process of the cgroup outlived killByProcs")
		}
	}
	if pids, err := treeProcs(dir); err != nil || len(pids) != 0 {
		t.Errorf("left in the tree: %v, %v", pids, err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "cgroup.freeze")); string(data) != "0\n" {
		t.Errorf("cgroup.freeze = %q after the kill, want thawed", data)
	}
}
