package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/test/apiserver"
)

// The multi-node tier's network: a bridge in the host's network namespace
// whose address the API server binds, and one network namespace per node
// with a veth on the bridge. Only namespaces and links this tier creates
// are touched.
const (
	bridgeName = "gs-e2e-br0"
	// Gateway is the bridge's address: the API server's, and where the
	// nodes reach the host.
	Gateway   = "10.250.0.1"
	subnetLen = "/24"
	// netnsPrefix names the nodes' network namespaces (ip netns).
	netnsPrefix = "gs-e2e-"
	// cgroupPrefix names each node's --cgroup-root, so that the nodes'
	// pods never share a kubepods cgroup.
	cgroupPrefix = "gpuslice-e2e-"
	// multiMarker in a run's directory says it made the network above.
	multiMarker = "multi-node"
)

// NodeDir is where each node's own files (its fake GPU, device nodes and
// containerd state) appear inside that node's mount namespace: the same
// path on every node, as a DaemonSet's hostPath volumes need.
const NodeDir = "/var/lib/gpuslice-e2e"

// NodeSpec describes one worker node of a multi-node cluster.
type NodeSpec struct {
	// Name is the Node's name.
	Name string
	// FakeGPU is the node's fake GPU YAML without workloadDir; "" for a
	// node without GPUs (a fake driver that lists none, no gpu.present
	// label).
	FakeGPU string
}

// MultiOptions configure StartMulti.
type MultiOptions struct {
	// Nodes are the worker nodes, at least two.
	Nodes []NodeSpec
	// WorkloadBin is the fake GPU workload, built static.
	WorkloadBin string
	// Archives are OCI image archives imported on every node (the agent's
	// image, for the chart's DaemonSet).
	Archives []string
	// SchedulerConfig is a KubeSchedulerConfiguration's profiles section
	// (YAML, from "profiles:"), or "" for the scheduler's defaults.
	SchedulerConfig string
	// Audit, when set, has the API server write an audit log
	// (Multi.AuditLog): an independent count of what clients ask.
	Audit bool
	// Log receives progress.
	Log func(format string, args ...any)
}

// Multi is a running cluster of several nodes on this one machine: one
// etcd, API server, controller manager and scheduler on the host, and per
// node a network namespace on a bridge, a mount namespace, a containerd
// and a kubelet with its own root directory, state, sockets and cgroup
// root. Pods use their node's network (there is no pod network).
type Multi struct {
	// API is etcd and kube-apiserver, bound to Gateway.
	API *apiserver.Server
	// Dir holds every file of the cluster.
	Dir string
	// Nodes are the worker nodes, in the order of MultiOptions.Nodes.
	Nodes []*Node
	// AuditLog is the API server's audit log (JSON lines), with Audit.
	AuditLog string

	cp  *Cluster // the control plane's processes
	log func(format string, args ...any)
}

// Node is one worker node of a Multi.
type Node struct {
	// Name is the Node's name.
	Name string
	// IP is the node's address on the bridge.
	IP string
	// Dir is the node's directory on the host, mounted at NodeDir inside
	// the node.
	Dir string
	// NetNS is the path of the node's network namespace.
	NetNS string
	// MountNS is the file holding the node's mount namespace.
	MountNS string
	// CgroupRoot is the kubelet's --cgroup-root.
	CgroupRoot string
	// HasGPU says the node has a fake GPU (NodeDir/fakegpu.yaml lists it).
	HasGPU bool

	veth       string
	containerd *apiserver.Process
	kubelet    *apiserver.Process
	kubeletArg []string
	mounts     []string
	m          *Multi
}

// StartMulti brings a multi-node cluster up. On error everything started
// so far is stopped.
func StartMulti(ctx context.Context, o MultiOptions) (m *Multi, err error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if len(o.Nodes) < 2 || len(o.Nodes) > 50 {
		return nil, fmt.Errorf("a multi-node cluster has 2 to 50 nodes, not %d", len(o.Nodes))
	}
	ReapStale(o.Log)
	dir, err := os.MkdirTemp("", "gpuslice-e2e-")
	if err != nil {
		return nil, err
	}
	m = &Multi{Dir: dir, log: o.Log}
	m.cp = &Cluster{Dir: dir, log: o.Log}
	started := m
	defer func() {
		if err != nil {
			started.Stop()
		}
	}()
	for _, f := range []struct{ name, data string }{{"owner.pid", strconv.Itoa(os.Getpid())}, {multiMarker, ""}} {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.data), 0o600); err != nil {
			return nil, err
		}
	}
	t0 := time.Now()
	if err := makeBridge(); err != nil {
		return nil, err
	}
	if o.Audit {
		m.AuditLog = filepath.Join(dir, "audit.log")
	}
	if m.API, err = apiserver.Launch(filepath.Join(dir, "api"), apiserver.Options{ServiceAccounts: true, Address: Gateway, AuditLog: m.AuditLog}); err != nil {
		return nil, err
	}
	m.cp.API = m.API
	if err := m.cp.startControllerManager(); err != nil {
		return nil, err
	}
	if err := m.startScheduler(o.SchedulerConfig); err != nil {
		return nil, err
	}
	m.log("control plane ready after %v", time.Since(t0).Round(time.Millisecond))
	archives, err := buildImages(filepath.Join(dir, "images"), o.WorkloadBin)
	if err != nil {
		return nil, err
	}
	archives = append(archives, o.Archives...)
	for i, spec := range o.Nodes {
		n := &Node{Name: spec.Name, IP: fmt.Sprintf("10.250.0.%d", 10+i), Dir: filepath.Join(dir, "node-"+strconv.Itoa(i)),
			NetNS: "/run/netns/" + netnsPrefix + strconv.Itoa(i), CgroupRoot: "/" + cgroupPrefix + spec.Name,
			HasGPU: spec.FakeGPU != "", veth: fmt.Sprintf("gs-e2e-v%d", i), m: m}
		m.Nodes = append(m.Nodes, n)
		if err := n.start(ctx, spec, archives); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		m.log("node %s (%s) registered after %v", n.Name, n.IP, time.Since(t0).Round(time.Millisecond))
	}
	return m, nil
}

// makeBridge creates the bridge with Gateway's address.
func makeBridge() error {
	if err := run("ip", "link", "add", bridgeName, "type", "bridge"); err != nil {
		return err
	}
	if err := run("ip", "addr", "add", Gateway+subnetLen, "dev", bridgeName); err != nil {
		return err
	}
	return run("ip", "link", "set", bridgeName, "up")
}

// startScheduler starts kube-scheduler with profiles, when given.
func (m *Multi) startScheduler(profiles string) error {
	if profiles == "" {
		return m.cp.startScheduler()
	}
	port, err := apiserver.FreePort()
	if err != nil {
		return err
	}
	conf := filepath.Join(m.Dir, "scheduler.yaml")
	cfg := fmt.Sprintf("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nleaderElection: {leaderElect: false}\nclientConnection: {kubeconfig: %q}\n%s", m.API.Kubeconfig, profiles)
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return err
	}
	kc := m.API.Kubeconfig
	m.cp.sched, err = apiserver.StartProcess("kube-scheduler", m.cp.bin("kube-scheduler"), "--config="+conf,
		"--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port), "--v=0")
	if err != nil {
		return err
	}
	m.cp.record(m.cp.sched)
	return nil
}

// start brings one node up: its cgroup root, network, mount namespace,
// containerd with the images, and kubelet.
func (n *Node) start(ctx context.Context, spec NodeSpec, archives []string) error {
	for _, sub := range []string{"fakegpu", "containerd/state", "kubelet/pod-logs", "kubelet/certs"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, sub), 0o755); err != nil { //nolint:gosec // pods write the fake GPU's dir
			return err
		}
	}
	// A node without GPUs gets a fake driver that lists none, for an
	// agent put there by mistake.
	fake := "gpus: []\n"
	if n.HasGPU {
		fake = spec.FakeGPU + "workloadDir: " + NodeDir + "/fakegpu\n"
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "fakegpu.yaml"), []byte(fake), 0o644); err != nil { //nolint:gosec // the agent's pod reads it
		return err
	}
	if _, err := (&Cluster{Dir: n.Dir}).deviceNodes(); err != nil {
		return err
	}
	if err := makeCgroupRoot(n.CgroupRoot); err != nil {
		return err
	}
	if err := n.network(); err != nil {
		return err
	}
	if err := n.mountNamespace(); err != nil {
		return err
	}
	d := filepath.Join(n.Dir, "containerd")
	conf, err := writeContainerdConfig(d, NodeDir+"/containerd/state", "")
	if err != nil {
		return err
	}
	if n.containerd, err = apiserver.StartProcess("containerd "+n.Name, "nsenter", n.enter("containerd", "--config", conf)...); err != nil {
		return err
	}
	n.m.cp.record(n.containerd)
	if err := waitContainerd(ctx, n.containerd, n.ContainerdSocket()); err != nil {
		return err
	}
	for _, a := range archives {
		if err := importArchive(n.ContainerdSocket(), a); err != nil {
			return err
		}
	}
	return n.startKubelet(ctx)
}

// enter is nsenter's arguments to run argv in the node's namespaces.
func (n *Node) enter(argv ...string) []string {
	return append([]string{"--net=" + n.NetNS, "--mount=" + n.MountNS, "--"}, argv...)
}

// Exec runs argv in the node's network and mount namespaces.
func (n *Node) Exec(argv ...string) (string, error) {
	out, err := exec.Command("nsenter", n.enter(argv...)...).CombinedOutput()
	return string(out), err
}

// ContainerdSocket is the node's containerd socket, for ctr -a.
func (n *Node) ContainerdSocket() string {
	return filepath.Join(n.Dir, "containerd", "containerd.sock")
}

// WorkloadDir is the fake GPU's workload directory as the node's pods and
// agent see it; HostWorkloadDir the same directory on the host.
func (n *Node) WorkloadDir() string { return NodeDir + "/fakegpu" }

// HostWorkloadDir is the node's fake GPU workload directory on the host.
func (n *Node) HostWorkloadDir() string { return filepath.Join(n.Dir, "fakegpu") }

// network makes the node's network namespace with a veth on the bridge.
func (n *Node) network() error {
	ns := filepath.Base(n.NetNS)
	peer := n.veth + "p"
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", n.veth, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", n.veth, "master", bridgeName, "up"},
		{"ip", "link", "set", peer, "netns", ns},
		{"ip", "-n", ns, "link", "set", peer, "name", "eth0"},
		{"ip", "-n", ns, "addr", "add", n.IP + subnetLen, "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// CutNetwork takes the node off the bridge: nothing on the host reaches
// it (its agent's /metrics, its kubelet) and it reaches nothing (the API
// server), as when a node's link or switch fails.
func (n *Node) CutNetwork() error { return run("ip", "link", "set", n.veth, "down") }

// RestoreNetwork puts the node back on the bridge.
func (n *Node) RestoreNetwork() error { return run("ip", "link", "set", n.veth, "up") }

// mountNamespace makes the node's persistent private mount namespace:
// /var/lib and /var/log overlaid on the node's own directories (the
// kubelet's root and the device-plugin directory are the usual paths),
// /run/containerd on a tmpfs of its own, and the node's directory at
// NodeDir.
func (n *Node) mountNamespace() error {
	var err error
	if n.MountNS, err = pinnedMountNS(n.Dir, &n.mounts); err != nil {
		return err
	}
	in := func(argv ...string) error {
		return run("nsenter", append([]string{"--mount=" + n.MountNS, "--"}, argv...)...)
	}
	if err := in("mkdir", "-p", NodeDir, "/run/containerd"); err != nil {
		return err
	}
	if err := in("mount", "-t", "tmpfs", "-o", "mode=0711", "tmpfs", "/run/containerd"); err != nil {
		return err
	}
	return in("mount", "--bind", n.Dir, NodeDir)
}

// startKubelet writes the node's kubelet config and starts it.
func (n *Node) startKubelet(ctx context.Context) error {
	d := filepath.Join(n.Dir, "kubelet")
	cfg := kubeletConfig(kubeletSettings{address: n.IP, port: 10250, healthzPort: 10248, cgroupRoot: n.CgroupRoot,
		podLogs: filepath.Join(d, "pod-logs"), runtime: "unix://" + n.ContainerdSocket()})
	conf := filepath.Join(d, "config.yaml")
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return err
	}
	var labels []string
	if n.HasGPU {
		// What NFD or the GPU Operator label a GPU node with; the chart's
		// DaemonSet selects it.
		labels = append(labels, "nvidia.com/gpu.present=true")
	}
	n.kubeletArg = n.enter(n.m.cp.bin("kubelet"), "--config="+conf, "--kubeconfig="+n.m.API.Kubeconfig,
		"--root-dir=/var/lib/kubelet", "--cert-dir="+filepath.Join(d, "certs"), "--hostname-override="+n.Name,
		"--node-ip="+n.IP, "--node-labels="+strings.Join(labels, ","), "--v=1")
	return n.StartKubelet(ctx)
}

// StartKubelet starts the node's kubelet (again) and waits for its Node.
func (n *Node) StartKubelet(ctx context.Context) error {
	var err error
	if n.kubelet, err = apiserver.StartProcess("kubelet "+n.Name, "nsenter", n.kubeletArg...); err != nil {
		return err
	}
	n.m.cp.record(n.kubelet)
	kubectl := n.m.cp.bin("kubectl")
	return wait(ctx, 90*time.Second, "Node "+n.Name, func() error {
		if n.kubelet.Exited() {
			return fmt.Errorf("kubelet exited: %s", n.kubelet.Logs.Tail(3000))
		}
		return exec.Command(kubectl, "--kubeconfig="+n.m.API.Kubeconfig, "get", "node", n.Name).Run()
	})
}

// StopKubelet stops the node's kubelet; its pods keep running.
func (n *Node) StopKubelet() {
	if n.kubelet != nil {
		n.kubelet.Stop()
		n.kubelet = nil
	}
}

// Logs returns the tail of every component's output, for a failed test.
func (m *Multi) Logs() string {
	var b strings.Builder
	b.WriteString(m.cp.Logs())
	for _, n := range m.Nodes {
		for _, p := range []*apiserver.Process{n.containerd, n.kubelet} {
			if p != nil {
				fmt.Fprintf(&b, "--- %s (tail)\n%s\n", p.Name, p.Logs.Tail(3000))
			}
		}
	}
	return b.String()
}

// Stop tears the cluster down: every node's kubelet, pods and containerd,
// its mounts, network and cgroups, then the control plane, the bridge and
// the directory. It is safe on a half-started cluster.
func (m *Multi) Stop() {
	for _, n := range m.Nodes {
		n.stop()
	}
	if m.cp.sched != nil {
		m.cp.sched.Stop()
	}
	if m.cp.kcm != nil {
		m.cp.kcm.Stop()
	}
	if m.API != nil {
		m.API.Stop()
	}
	removeMultiNetwork()
	unmountUnder(m.Dir)
	_ = os.RemoveAll(m.Dir)
}

func (n *Node) stop() {
	n.StopKubelet()
	if n.containerd != nil {
		removePodsAt(n.ContainerdSocket())
		n.containerd.Stop()
	}
	for i := len(n.mounts) - 1; i >= 0; i-- {
		if err := run("umount", n.mounts[i]); err != nil {
			_ = run("umount", "-l", n.mounts[i])
		}
	}
	removeCgroupRoot(n.CgroupRoot)
}

// makeCgroupRoot creates root in every cgroup hierarchy: the kubelet
// refuses a --cgroup-root that does not exist.
func makeCgroupRoot(root string) error {
	for _, h := range hierarchies() {
		if err := os.MkdirAll(filepath.Join(h, root), 0o755); err != nil { //nolint:gosec // a cgroup
			return fmt.Errorf("cgroup root: %w", err)
		}
	}
	return nil
}

// removeCgroupRoot removes root's empty cgroups in every hierarchy,
// bottom-up; a cgroup with processes stays.
func removeCgroupRoot(root string) {
	for _, h := range hierarchies() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = os.Remove(dirs[i])
		}
	}
}

// hierarchies are the mounted cgroup hierarchies under /sys/fs/cgroup
// (links such as cpu,cpuacct skipped).
func hierarchies() []string {
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	var out []string
	for _, e := range entries {
		p := filepath.Join("/sys/fs/cgroup", e.Name())
		if e.IsDir() && e.Type()&os.ModeSymlink == 0 {
			if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil {
				out = append(out, p)
			}
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err == nil {
		out = append(out, "/sys/fs/cgroup") // unified only
	}
	return out
}

// removeMultiNetwork deletes the tier's network namespaces and bridge
// (deleting a namespace deletes its veth, and so the host's end).
func removeMultiNetwork() {
	names, _ := filepath.Glob("/run/netns/" + netnsPrefix + "*")
	for _, p := range names {
		_ = run("ip", "netns", "delete", filepath.Base(p))
	}
	if _, err := os.Stat("/sys/class/net/" + bridgeName); err == nil {
		_ = run("ip", "link", "delete", bridgeName)
	}
}

// reapMulti cleans what a killed multi-node run left besides its
// directory: its nodes' pods and cgroups, namespaces and bridge.
func reapMulti() {
	roots, _ := filepath.Glob("/sys/fs/cgroup/pids/" + cgroupPrefix + "*")
	for _, r := range roots {
		killCgroupTree(r)
		killCgroupTree(filepath.Join("/sys/fs/cgroup/unified", filepath.Base(r)))
		removeCgroupRoot("/" + filepath.Base(r))
	}
	removeMultiNetwork()
}
