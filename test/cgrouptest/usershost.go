package cgrouptest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// UsersHost is a cgroup v2 tree shaped like the hosts users run: the
// kubelet's systemd driver names (kubepods.slice, kubepods-<qos>.slice,
// kubepods-<qos>-pod<uid>.slice, cri-containerd-<id>.scope) under a base of
// the test's own in the v2 hierarchy (a non-root --cgroup-root, as kind
// uses), with the agent's own container among them, so an agent started
// there in a private cgroup namespace (as containerd starts a
// non-privileged container on a unified host) reads every other pod's
// cgroup relative to its own.
type UsersHost struct {
	// Mount is the cgroup v2 mount (/sys/fs/cgroup/unified on a hybrid
	// host, /sys/fs/cgroup on a unified one).
	Mount string
	// Base is the tree's top, a directory under Mount.
	Base string
}

// AgentPodUID and AgentContainerID name the agent's own pod and container.
const (
	AgentPodUID      = "0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a"
	AgentContainerID = "a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9"
)

// NewUsersHost makes the tree under cgroupRoot's v2 hierarchy, named for
// the test, and removes it at the end (thawing what is left frozen). It
// skips (or fails under Require) where the host has no writable v2
// hierarchy with cgroup.freeze or no unshare(1).
func NewUsersHost(t *testing.T, cgroupRoot, name string) *UsersHost {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		Skip(t, "unshare(1) is needed to start a process in a private cgroup namespace: %v", err)
	}
	mount := ""
	for _, d := range []string{cgroupRoot, filepath.Join(cgroupRoot, "unified")} {
		if _, err := os.Stat(filepath.Join(d, "cgroup.controllers")); err == nil {
			mount = d
			break
		}
	}
	if mount == "" {
		Skip(t, "no cgroup v2 hierarchy under %s", cgroupRoot)
	}
	h := &UsersHost{Mount: mount, Base: filepath.Join(mount, fmt.Sprintf("%s-%d", name, os.Getpid()))}
	if err := os.Mkdir(h.Base, 0o750); err != nil {
		Skip(t, "cannot create cgroups in %s: %v", mount, err)
	}
	if _, err := os.Stat(filepath.Join(h.Base, "cgroup.freeze")); err != nil {
		_ = os.Remove(h.Base)
		Skip(t, "the cgroup v2 hierarchy at %s has no cgroup.freeze: %v", mount, err)
	}
	t.Cleanup(func() {
		if err := RemoveTree(h.Base, 10*time.Second); err != nil {
			t.Error(err)
		}
	})
	return h
}

// systemdUID is a pod UID as the systemd driver spells it.
func systemdUID(uid string) string { return strings.ReplaceAll(uid, "-", "_") }

// PodDir is the pod's cgroup (qos "guaranteed", "burstable" or
// "besteffort"), created if missing, as a directory.
func (h *UsersHost) PodDir(t *testing.T, qos, podUID string) string {
	t.Helper()
	dir := filepath.Join(h.Base, "kubepods.slice")
	if qos == "guaranteed" {
		dir = filepath.Join(dir, "kubepods-pod"+systemdUID(podUID)+".slice")
	} else {
		dir = filepath.Join(dir, "kubepods-"+qos+".slice", "kubepods-"+qos+"-pod"+systemdUID(podUID)+".slice")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ContainerDir is a container's cgroup (containerd's scope) in its pod's,
// created if missing, as a directory.
func (h *UsersHost) ContainerDir(t *testing.T, qos, podUID, containerID string) string {
	t.Helper()
	dir := filepath.Join(h.PodDir(t, qos, podUID), "cri-containerd-"+containerID+".scope")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	return dir
}

// AgentDir is the agent's own container cgroup (a burstable pod, as the
// chart's agent is).
func (h *UsersHost) AgentDir(t *testing.T) string {
	t.Helper()
	return h.ContainerDir(t, "burstable", AgentPodUID, AgentContainerID)
}

// InPrivateNamespace returns a command that runs argv in cgroup dir inside
// a new cgroup namespace rooted there, as containerd starts a
// non-privileged container on a unified host: the shell moves itself into
// dir, then unshare(1) unshares the namespace and execs argv, so the
// process keeps the shell's PID.
func InPrivateNamespace(dir string, argv ...string) *exec.Cmd {
	args := append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec unshare --cgroup "$@"`, dir}, argv...)
	return exec.Command("/bin/sh", args...)
}

// InCgroup returns a command that runs argv in cgroup dir, in the host's
// cgroup namespace (a tenant's process: its namespace does not change what
// the agent reads).
func InCgroup(dir string, argv ...string) *exec.Cmd {
	args := append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir}, argv...)
	return exec.Command("/bin/sh", args...)
}
