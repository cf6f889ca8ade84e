package host_test

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
)

// TestPrivateNamespaceOnRealCgroups puts a reader in a private cgroup
// namespace rooted at an agent's container cgroup in a systemd-named v2
// tree, as containerd starts the chart's agent on a unified host, and has
// it read its own and a tenant's /proc/<pid>/cgroup there. The kernel
// renders the tenant's path relative to the reader's root; the namespace
// the reader discovers turns it back into the tenant's real cgroup.
func TestPrivateNamespaceOnRealCgroups(t *testing.T) {
	t.Parallel()
	h := cgrouptest.NewUsersHost(t, "/sys/fs/cgroup", "gpuslice-ns-test")
	const podUID = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
	cid := strings.Repeat("7", 64)
	tenantDir := h.ContainerDir(t, "burstable", podUID, cid)
	podDir := h.PodDir(t, "burstable", podUID)

	start := func(cmdArgs ...string) int {
		t.Helper()
		cmd := cgrouptest.InCgroup(cmdArgs[0], cmdArgs[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd.Process.Pid
	}
	tenant := start(tenantDir, "sleep", "60")
	podLevel := start(podDir, "sleep", "60")
	waitIn(t, tenantDir, tenant)
	waitIn(t, podDir, podLevel)

	script := `cat /proc/self/cgroup; echo --; cat /proc/` + strconv.Itoa(tenant) + `/cgroup; echo --; cat /proc/` + strconv.Itoa(podLevel) + `/cgroup; echo --; cat /proc/1/cgroup; echo --; exec sleep 60`
	reader := cgrouptest.InPrivateNamespace(h.AgentDir(t), "/bin/sh", "-c", script)
	out, err := reader.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reader.Process.Kill(); _ = reader.Wait() })
	var parts [4]strings.Builder
	sc := bufio.NewScanner(out)
	for i := 0; i < 4 && sc.Scan(); {
		if sc.Text() == "--" {
			i++
			continue
		}
		parts[i].WriteString(sc.Text() + "\n")
	}
	self, tenantLines, podLines, initLines := parts[0].String(), parts[1].String(), parts[2].String(), parts[3].String()

	// The users' host as the agent meets it: its own cgroup is the root,
	// the tenant's is relative to it.
	if !strings.Contains(self, "0::/\n") {
		t.Fatalf("the reader is not in a private cgroup namespace: %q", self)
	}
	if !strings.Contains(tenantLines, "0::/../../") {
		t.Fatalf("the tenant's cgroup does not read relative to the reader's: %q", tenantLines)
	}
	// Read as the host's namespace, it names the container but cannot
	// place it: nothing is enforced on a guess.
	c, err := host.ParseProcCgroup([]byte(tenantLines))
	if err != nil || c.ContainerID != cid || c.PodUID != podUID || c.Unresolved == "" || c.Paths[""] != "" {
		t.Fatalf("read as the host's: %+v, %v; want the container named, its v2 cgroup unresolved", c, err)
	}

	// Host init's line (the test runs in the host's PID namespace) says how
	// deep the root lies, so the search reads that depth alone.
	ns, err := host.DiscoverNamespace([]byte(self), []byte(initLines), "/sys/fs/cgroup", reader.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	wantRoot := "/" + strings.TrimPrefix(h.AgentDir(t), h.Mount+"/")
	if root, ok := ns.Root(""); !ok || root != wantRoot || !ns.Private() {
		t.Fatalf("namespace root %q (%v), private %v; want %q", root, ok, ns.Private(), wantRoot)
	}
	c, err = ns.ParseProcCgroup([]byte(tenantLines))
	if err != nil {
		t.Fatal(err)
	}
	if c.ContainerID != cid || c.PodUID != podUID || c.QoS != host.QoSBurstable || filepath.Join(h.Mount, c.Paths[""]) != tenantDir {
		t.Fatalf("tenant = %+v; want container %s of pod %s in %s", c, cid, podUID, tenantDir)
	}
	if _, err := os.Stat(filepath.Join(h.Mount, c.Paths[""], "cgroup.freeze")); err != nil {
		t.Errorf("the resolved cgroup has no freezer: %v", err)
	}
	p, err := ns.ParseProcCgroup([]byte(podLines))
	if err != nil || !p.PodLevel() || p.PodUID != podUID || filepath.Join(h.Mount, p.Paths[""]) != podDir {
		t.Fatalf("pod-level process = %+v, %v; want pod %s in %s", p, err, podUID, podDir)
	}
}

// waitIn waits until pid is listed in the cgroup dir (the shell moves
// itself in before it execs).
func waitIn(t *testing.T, dir string, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if strings.Contains("\n"+string(data), "\n"+strconv.Itoa(pid)+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never reached %s", pid, dir)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
