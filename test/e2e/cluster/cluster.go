// Package cluster starts a real single-node Kubernetes cluster for the
// end-to-end tier: etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler built from the Kubernetes sources (test/e2e/build-k8s.sh),
// Debian's containerd and runc and a kubelet sharing a private mount
// namespace, and gpu-agent on the fake GPU backend beside it, with images
// built locally. Everything runs
// from one temporary directory and is stopped by PID.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/internal/oci"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

// NodeName is the name the kubelet registers.
const NodeName = "gpuslice-e2e"

// Images the pods run, imported into containerd; pods use
// imagePullPolicy Never.
const (
	PauseImage = "gpuslice.local/pause:e2e"
	TestImage  = "gpuslice.local/e2e:1"
)

// Cluster is a running single-node cluster.
type Cluster struct {
	// API is etcd and kube-apiserver.
	API *apiserver.Server
	// Dir holds every file of the cluster.
	Dir string
	// KubeletRoot is the kubelet's --root-dir.
	KubeletRoot string
	// PodResourcesSocket is the kubelet's pod-resources socket.
	PodResourcesSocket string
	// MountNS is the file holding the kubelet's mount namespace.
	MountNS string
	// FakeConfig is the agent's --fake-config file: edit its faults to
	// inject them.
	FakeConfig string
	// WorkloadDir is the fake GPU node's workload directory, mounted into
	// pods at the same path.
	WorkloadDir string
	// PodLogsDir is where the kubelet keeps containers' logs.
	PodLogsDir string
	// MetricsAddr is where the agent serves /metrics.
	MetricsAddr string
	// AgentArgs are the agent's flags.
	AgentArgs []string
	// CDIDir is where containerd reads CDI specs and gpu-dra-driver writes
	// them; PreparedClaims the driver's record. Both only in DRA mode.
	CDIDir, PreparedClaims string

	agentBin   string
	draBin     string
	draArgs    []string
	draDriver  *apiserver.Process
	containerd *apiserver.Process
	kcm        *apiserver.Process
	sched      *apiserver.Process
	kubelet    *apiserver.Process
	agent      *apiserver.Process
	kubeletArg []string
	mounts     []string // to unmount at Stop, innermost last
	log        func(format string, args ...any)
}

// Options configure Start.
type Options struct {
	// AgentBin is the gpu-agent binary.
	AgentBin string
	// WorkloadBin is the fake GPU workload, built static (CGO_ENABLED=0).
	WorkloadBin string
	// FakeGPU is the fake node's YAML, without workloadDir.
	FakeGPU string
	// AgentArgs are extra agent flags.
	AgentArgs []string
	// DRADriverBin, when set, runs the cluster in DRA mode: containerd
	// with CDI (it must be 2.x, ContainerdHasCDI), gpu-dra-driver from this
	// binary with DRADriverArgs, and the agent with --dra.
	DRADriverBin  string
	DRADriverArgs []string
	// Log receives progress.
	Log func(format string, args ...any)
}

// Requirements lists what the tier needs that this machine lacks.
func Requirements() []string {
	var missing []string
	for _, b := range apiserver.Missing("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet") {
		missing = append(missing, b+" (test/e2e/build-k8s.sh)")
	}
	for _, c := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare", "nsenter", "mount", "umount", "gcc"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil || exec.Command("ldd", "/bin/busybox").Run() == nil {
		missing = append(missing, "a static /bin/busybox (busybox-static)")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	return missing
}

// agentSetup writes the fake GPU node's file and the agent's arguments.
func (c *Cluster) agentSetup(o Options) error {
	c.WorkloadDir = filepath.Join(c.Dir, "fakegpu")
	if err := os.MkdirAll(c.WorkloadDir, 0o755); err != nil { //nolint:gosec // pods write here
		return err
	}
	c.FakeConfig = filepath.Join(c.Dir, "fakegpu.yaml")
	if err := os.WriteFile(c.FakeConfig, []byte(o.FakeGPU+"workloadDir: "+c.WorkloadDir+"\n"), 0o600); err != nil {
		return err
	}
	port, err := apiserver.FreePort()
	if err != nil {
		return err
	}
	c.MetricsAddr = fmt.Sprintf("127.0.0.1:%d", port)
	devRoot, err := c.deviceNodes()
	if err != nil {
		return err
	}
	c.AgentArgs = append([]string{
		"--gpu-backend=fake", "--fake-config=" + c.FakeConfig,
		"--pod-resources-socket=" + c.PodResourcesSocket,
		"--kubeconfig=" + c.API.Kubeconfig, "--node-name=" + NodeName,
		"--metrics-address=" + c.MetricsAddr, "--health-address=127.0.0.1:0", "--sample-interval=500ms",
		"--enforcement-state=" + filepath.Join(c.Dir, "enforcement.json"),
		"--dev-root=" + devRoot, "--cgroup-root=/sys/fs/cgroup",
		// containerd's bundles name each container ID's container.
		"--runtime-state-dirs=" + filepath.Join(c.Dir, "containerd", "state", "io.containerd.runtime.v2.task", "k8s.io"),
	}, append(c.draAgentArgs(), o.AgentArgs...)...)
	return nil
}

// Start brings the cluster up: about 10 s warm. On error everything
// started so far is stopped.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	dir, err := os.MkdirTemp("", "gpuslice-e2e-")
	if err != nil {
		return nil, err
	}
	c = &Cluster{Dir: dir, agentBin: o.AgentBin, draBin: o.DRADriverBin, draArgs: o.DRADriverArgs, log: o.Log}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return nil, err
	}
	// The returns below set c to nil: stop what was started through a copy.
	started := c
	defer func() {
		if err != nil {
			started.Stop()
		}
	}()
	t0 := time.Now()
	ReapStale(o.Log) // what a run that was killed left behind
	// As on any real cluster, pods get their service account's token: the
	// chart-installed agent and controller use in-cluster config.
	if c.API, err = apiserver.Launch(filepath.Join(dir, "api"), apiserver.Options{ServiceAccounts: true}); err != nil {
		return nil, err
	}
	c.log("api server ready after %v", time.Since(t0).Round(time.Millisecond))
	if err := c.startControllerManager(); err != nil {
		return nil, err
	}
	if err := c.startScheduler(); err != nil {
		return nil, err
	}
	if v, verr := c.API.Version(); verr == nil {
		c.log("kubernetes %s: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet built from source", v)
	}
	if err := c.mountNamespace(); err != nil {
		return nil, err
	}
	if c.draBin != "" {
		if err := c.draSetup(); err != nil {
			return nil, err
		}
	}
	if err := c.startContainerd(ctx); err != nil {
		return nil, err
	}
	if err := c.importImages(o.WorkloadBin); err != nil {
		return nil, err
	}
	c.log("containerd ready, images imported after %v", time.Since(t0).Round(time.Millisecond))
	if err := c.startKubelet(ctx); err != nil {
		return nil, err
	}
	c.log("node registered after %v", time.Since(t0).Round(time.Millisecond))
	if err := c.agentSetup(o); err != nil {
		return nil, err
	}
	if err := c.StartAgent(); err != nil {
		return nil, err
	}
	c.log("agent started after %v", time.Since(t0).Round(time.Millisecond))
	if c.draBin != "" {
		if err := c.StartDRADriver(); err != nil {
			return nil, err
		}
		c.log("gpu-dra-driver started after %v", time.Since(t0).Round(time.Millisecond))
	}
	return c, nil
}

// deviceNodes makes stand-ins for the NVIDIA device nodes Allocate hands
// out, so runc really adds them to containers: character devices with
// NVIDIA's numbers, which no driver answers here.
func (c *Cluster) deviceNodes() (string, error) {
	dev := filepath.Join(c.Dir, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil { //nolint:gosec // device dir
		return "", err
	}
	nodes := map[string][2]int{"nvidiactl": {195, 255}, "nvidia-uvm": {510, 0}, "nvidia-uvm-tools": {510, 1}}
	for i := range 16 {
		nodes[fmt.Sprintf("nvidia%d", i)] = [2]int{195, i}
	}
	for name, mm := range nodes {
		if err := run("mknod", "-m", "666", filepath.Join(dev, name), "c", fmt.Sprint(mm[0]), fmt.Sprint(mm[1])); err != nil {
			return "", err
		}
	}
	return dev, nil
}

func (c *Cluster) bin(name string) string { return filepath.Join(apiserver.BinDir(), name) }

// startScheduler starts kube-scheduler: test pods are placed by it, by
// their resources and affinity, as on a real cluster, never pinned.
func (c *Cluster) startScheduler() error {
	port, err := apiserver.FreePort()
	if err != nil {
		return err
	}
	kc := c.API.Kubeconfig
	c.sched, err = apiserver.StartProcess("kube-scheduler", c.bin("kube-scheduler"),
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--leader-elect=false", "--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port), "--v=0")
	if err != nil {
		return err
	}
	c.record(c.sched)
	return nil
}

func (c *Cluster) startControllerManager() error {
	port, err := apiserver.FreePort()
	if err != nil {
		return err
	}
	// Service accounts and quota status; not node lifecycle, which would
	// taint a node without networking.
	c.kcm, err = apiserver.StartProcess("kube-controller-manager", c.bin("kube-controller-manager"),
		"--kubeconfig="+c.API.Kubeconfig, "--authentication-kubeconfig="+c.API.Kubeconfig, "--authorization-kubeconfig="+c.API.Kubeconfig,
		// The cloud controllers (cloud-node-lifecycle, service-lb, node-route)
		// do not run without a cloud provider; 1.37 no longer knows their names.
		"--controllers=*,-nodelifecycle,-nodeipam,-persistentvolume-binder,-attachdetach",
		"--leader-elect=false", "--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port),
		"--service-account-private-key-file="+c.API.ServiceAccountKey, "--root-ca-file="+c.API.CAFile,
		"--use-service-account-credentials=false", "--v=0")
	if err != nil {
		return err
	}
	c.record(c.kcm)
	return nil
}

// runcWrapper raises negative oomScoreAdj values to 0 before runc reads
// them: without CAP_SYS_RESOURCE (as on this machine class) runc cannot
// set the -998 the pod sandbox asks for. It also gives the chart's agent
// container (named agent) a private cgroup namespace, as containerd
// gives every non-privileged container on a unified cgroup v2 host (on
// this hybrid host it gives none).
const runcWrapper = `#!/bin/sh
bundle=""
prev=""
for a in "$@"; do
	case "$prev" in --bundle|-b) bundle="$a" ;; esac
	case "$a" in --bundle=*) bundle="${a#--bundle=}" ;; esac
	prev="$a"
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
	sed -i 's/"oomScoreAdj": *-[0-9]*/"oomScoreAdj":0/' "$bundle/config.json"
	if grep -q '"io.kubernetes.cri.container-name": *"agent"' "$bundle/config.json" &&
		! grep -q '{"type": *"cgroup"' "$bundle/config.json"; then # a namespace entry, not the /sys/fs/cgroup mount
		sed -i 's/"namespaces": *\[/"namespaces":[{"type":"cgroup"},/' "$bundle/config.json"
	fi
fi
exec %s "$@"
`

func (c *Cluster) startContainerd(ctx context.Context) error {
	d := filepath.Join(c.Dir, "containerd")
	conf, err := writeContainerdConfig(d, filepath.Join(d, "state"), c.containerdCDI())
	if err != nil {
		return err
	}
	// In the kubelet's mount namespace, so that hostPath volumes (the
	// DaemonSet's device-plugin directory) and the kubelet's own mounts
	// (service-account token volumes) are what the kubelet sees.
	if c.containerd, err = apiserver.StartProcess("containerd", "nsenter", "--mount="+c.MountNS, "--", "containerd", "--config", conf); err != nil {
		return err
	}
	c.record(c.containerd)
	return waitContainerd(ctx, c.containerd, filepath.Join(d, "containerd.sock"))
}

// writeContainerdConfig writes a containerd config for the CRI with its
// files under d (state, the task bundles agents read, at state), runc
// behind runcWrapper, and cdi's lines; it returns the config's path.
func writeContainerdConfig(d, state, cdi string) (string, error) {
	for _, sub := range []string{"root", "opt", "cni/bin", "cni/conf"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil { //nolint:gosec // runtime dirs
			return "", err
		}
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return "", err
	}
	wrapper := filepath.Join(d, "runc-wrapper")
	if err := os.WriteFile(wrapper, []byte(fmt.Sprintf(runcWrapper, runc)), 0o755); err != nil { //nolint:gosec // an executable
		return "", err
	}
	sock := filepath.Join(d, "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
%s  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %q
        Root = %q
        SystemdCgroup = false
`, filepath.Join(d, "root"), state, sock, sock+".ttrpc", filepath.Join(d, "opt"), PauseImage, cdi,
		filepath.Join(d, "cni/bin"), filepath.Join(d, "cni/conf"), wrapper, filepath.Join(d, "runc"))
	conf := filepath.Join(d, "config.toml")
	return conf, os.WriteFile(conf, []byte(cfg), 0o600)
}

// waitContainerd waits until containerd answers on sock.
func waitContainerd(ctx context.Context, p *apiserver.Process, sock string) error {
	return wait(ctx, 30*time.Second, "containerd socket", func() error {
		if p.Exited() {
			return fmt.Errorf("containerd exited: %s", p.Logs.Tail(2000))
		}
		return exec.Command("ctr", "-a", sock, "version").Run()
	})
}

// ContainerdSocket is the cluster's containerd socket, for ctr -a.
func (c *Cluster) ContainerdSocket() string {
	return filepath.Join(c.Dir, "containerd", "containerd.sock")
}

// pauseSource is the pod sandbox's process: it waits for a signal.
const pauseSource = `#include <signal.h>
#include <unistd.h>
static void stop(int s) { (void)s; _exit(0); }
int main(void) {
	signal(SIGTERM, stop);
	signal(SIGINT, stop);
	for (;;) pause();
}
`

func (c *Cluster) importImages(workloadBin string) error {
	archives, err := buildImages(filepath.Join(c.Dir, "images"), workloadBin)
	if err != nil {
		return err
	}
	for _, archive := range archives {
		if err := c.ImportArchive(archive); err != nil {
			return err
		}
	}
	return nil
}

// buildImages writes the pause and test images as OCI archives in dir and
// returns their paths.
func buildImages(d, workloadBin string) ([]string, error) {
	if err := os.MkdirAll(d, 0o750); err != nil {
		return nil, err
	}
	src := filepath.Join(d, "pause.c")
	if err := os.WriteFile(src, []byte(pauseSource), 0o600); err != nil {
		return nil, err
	}
	pause := filepath.Join(d, "pause")
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", pause, src).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pause: %w: %s", err, out)
	}
	files := map[string]oci.File{"/bin/busybox": {Source: "/bin/busybox"}, "/bin/workload": {Source: workloadBin}}
	for _, applet := range []string{"sh", "env", "sleep", "cat", "ls", "echo", "grep", "true"} {
		files["/bin/"+applet] = oci.File{Link: "busybox"}
	}
	var archives []string
	for _, img := range []oci.Image{
		{Name: PauseImage, Files: map[string]oci.File{"/pause": {Source: pause}}, Entrypoint: []string{"/pause"}},
		{Name: TestImage, Files: files, Entrypoint: []string{"/bin/sh"}},
	} {
		archive := filepath.Join(d, strings.NewReplacer("/", "_", ":", "_").Replace(img.Name)+".tar")
		if err := img.WriteOCIArchive(archive); err != nil {
			return nil, err
		}
		archives = append(archives, archive)
	}
	return archives, nil
}

// ImportArchive imports an OCI image archive into the cluster's
// containerd, for pods with imagePullPolicy Never.
func (c *Cluster) ImportArchive(path string) error {
	return importArchive(c.ContainerdSocket(), path)
}

func importArchive(sock, path string) error {
	out, err := exec.Command("ctr", "-a", sock, "-n", "k8s.io", "images", "import", "--platform", "linux/amd64", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s: %w: %s", path, err, out)
	}
	return nil
}

// mountNamespace makes a persistent private mount namespace with /var/lib
// and /var/log overlaid on temp dirs. The kubelet's device-plugin socket
// path is hard-coded to /var/lib/kubelet/device-plugins: inside this
// namespace it lands in the overlay, not on the host. The namespace is
// pinned to a file so it outlives kubelet restarts.
func (c *Cluster) mountNamespace() error {
	var err error
	c.MountNS, err = pinnedMountNS(c.Dir, &c.mounts)
	return err
}

// pinnedMountNS makes a private mount namespace pinned to the file
// dir/ns/mnt, with /var/lib and /var/log overlaid on dir/overlay, and
// returns the file; what it mounts on the host is appended to mounts, to
// unmount at Stop, innermost last.
func pinnedMountNS(dir string, mounts *[]string) (string, error) {
	nsDir := filepath.Join(dir, "ns")
	if err := os.MkdirAll(nsDir, 0o750); err != nil {
		return "", err
	}
	if err := run("mount", "--bind", nsDir, nsDir); err != nil {
		return "", err
	}
	*mounts = append(*mounts, nsDir)
	if err := run("mount", "--make-private", nsDir); err != nil {
		return "", err
	}
	ns := filepath.Join(nsDir, "mnt")
	if err := os.WriteFile(ns, nil, 0o600); err != nil {
		return "", err
	}
	if err := run("unshare", "--mount="+ns, "--propagation", "private", "true"); err != nil {
		return "", err
	}
	*mounts = append(*mounts, ns)
	for _, target := range []string{"/var/lib", "/var/log"} {
		o := filepath.Join(dir, "overlay", strings.ReplaceAll(target, "/", "_"))
		for _, sub := range []string{"upper", "work"} {
			if err := os.MkdirAll(filepath.Join(o, sub), 0o755); err != nil { //nolint:gosec // the kubelet's dirs
				return "", err
			}
		}
		opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", target, filepath.Join(o, "upper"), filepath.Join(o, "work"))
		if err := run("nsenter", "--mount="+ns, "--", "mount", "-t", "overlay", "overlay", "-o", opts, target); err != nil {
			return "", err
		}
	}
	return ns, nil
}

func (c *Cluster) startKubelet(ctx context.Context) error {
	d := filepath.Join(c.Dir, "kubelet")
	c.KubeletRoot = filepath.Join(d, "root")
	for _, sub := range []string{"root", "pod-logs", "certs"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o750); err != nil {
			return err
		}
	}
	ports := make([]int, 2)
	for i := range ports {
		var err error
		if ports[i], err = apiserver.FreePort(); err != nil {
			return err
		}
	}
	cfg := kubeletConfig(kubeletSettings{address: "127.0.0.1", port: ports[0], healthzPort: ports[1], cgroupRoot: "/",
		podLogs: filepath.Join(d, "pod-logs"), runtime: "unix://" + c.ContainerdSocket()})
	conf := filepath.Join(d, "config.yaml")
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return err
	}
	c.PodResourcesSocket = filepath.Join(c.KubeletRoot, "pod-resources", "kubelet.sock")
	c.PodLogsDir = filepath.Join(d, "pod-logs")
	c.kubeletArg = []string{"--mount=" + c.MountNS, "--", c.bin("kubelet"),
		"--config=" + conf, "--kubeconfig=" + c.API.Kubeconfig, "--root-dir=" + c.KubeletRoot,
		"--cert-dir=" + filepath.Join(d, "certs"), "--hostname-override=" + NodeName, "--v=1"}
	return c.StartKubelet(ctx)
}

// kubeletSettings are what differs between the tier's kubelets.
type kubeletSettings struct {
	address             string
	port, healthzPort   int
	cgroupRoot, podLogs string
	runtime             string
}

// kubeletConfig is a KubeletConfiguration for a node of the tier: the
// cgroupfs driver, no authentication (only the tier reaches it), no
// eviction but at the very end, quick syncs.
func kubeletConfig(k kubeletSettings) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: %s

enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
podLogsDir: %q
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
evictionHard: {"memory.available": "1Mi", "nodefs.available": "1%%", "imagefs.available": "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
containerRuntimeEndpoint: %q
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 2s
`, k.cgroupRoot, k.address, k.port, k.healthzPort, k.podLogs, k.runtime)
}

// StartKubelet starts the kubelet (again) in the mount namespace and waits
// until its device-plugin socket is there.
func (c *Cluster) StartKubelet(ctx context.Context) error {
	var err error
	if c.kubelet, err = apiserver.StartProcess("kubelet", "nsenter", c.kubeletArg...); err != nil {
		return err
	}
	c.record(c.kubelet)
	err = wait(ctx, 60*time.Second, "kubelet device-plugin socket", func() error {
		if c.kubelet.Exited() {
			return fmt.Errorf("kubelet exited: %s", c.kubelet.Logs.Tail(3000))
		}
		return exec.Command("nsenter", "--mount="+c.MountNS, "--", "test", "-S", "/var/lib/kubelet/device-plugins/kubelet.sock").Run()
	})
	if err != nil {
		return err
	}
	kubectl := c.bin("kubectl")
	if _, statErr := os.Stat(kubectl); statErr != nil {
		return nil //nolint:nilerr // without kubectl, the tests wait for the Node themselves
	}
	return wait(ctx, 60*time.Second, "Node "+NodeName, func() error {
		return exec.Command(kubectl, "--kubeconfig="+c.API.Kubeconfig, "get", "node", NodeName).Run()
	})
}

// StopKubelet stops the kubelet; pods keep running under containerd.
func (c *Cluster) StopKubelet() {
	if c.kubelet != nil {
		c.kubelet.Stop()
		c.kubelet = nil
	}
}

// agentCgroups are the agent's own cgroups, in the v2 hierarchy and the v1
// freezer, beside kubepods: its "container" (a kubelet would remove a pod
// cgroup it does not know of).
var agentCgroups = []string{"/sys/fs/cgroup/unified/gpuslice-e2e-agent", "/sys/fs/cgroup/freezer/gpuslice-e2e-agent"}

// StartAgent starts gpu-agent in the kubelet's mount namespace and, as
// containerd starts a non-privileged container on a unified cgroup v2
// host, in a private cgroup namespace rooted at cgroups of its own (v2 and
// the v1 freezer): every pod's /proc/<pid>/cgroup then reads relative to
// the agent's ("0::/../kubepods/..."), so every scenario runs on the
// agent's resolution of those paths.
func (c *Cluster) StartAgent() error {
	script := `for cg in "$@"; do case "$cg" in --) shift; break ;; esac; mkdir -p "$cg" && echo $$ > "$cg/cgroup.procs" || exit 1; shift; done; exec unshare --cgroup "$@"`
	args := append([]string{"--mount=" + c.MountNS, "--", "/bin/sh", "-c", script, "sh"}, agentCgroups...)
	args = append(append(args, "--", c.agentBin), c.AgentArgs...)
	var err error
	c.agent, err = apiserver.StartProcess("gpu-agent", "nsenter", args...)
	if err != nil {
		return err
	}
	c.record(c.agent)
	return nil
}

// removeAgentCgroups removes the agent's own cgroups once it has gone.
func removeAgentCgroups() {
	for _, cg := range agentCgroups {
		_ = os.Remove(cg)
	}
}

// record appends a started process's PID to <dir>/pids, for ReapStale.
func (c *Cluster) record(p *apiserver.Process) {
	f, err := os.OpenFile(filepath.Join(c.Dir, "pids"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	_, _ = fmt.Fprintln(f, p.PID())
}

// StopAgent stops the agent with SIGTERM, as the kubelet stops a pod: it
// thaws what it froze and removes its socket.
func (c *Cluster) StopAgent() {
	if c.agent != nil {
		c.agent.Stop()
		c.agent = nil
	}
}

// KillAgent kills the agent with SIGKILL.
func (c *Cluster) KillAgent() {
	if c.agent != nil {
		c.agent.Kill()
		c.agent = nil
	}
}

// AgentLogs returns the agent's output.
func (c *Cluster) AgentLogs() string {
	if c.agent == nil {
		return ""
	}
	return c.agent.Logs.Tail(8000)
}

// AgentOutput is all the current agent process's output that was kept (the
// last MiB), for counting what it logged; AgentLogs is its tail, for
// reports.
func (c *Cluster) AgentOutput() string {
	if c.agent == nil {
		return ""
	}
	return c.agent.Logs.String()
}

// Logs returns the tail of every component's output, for a failed test.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, p := range []*apiserver.Process{c.containerd, c.kcm, c.sched, c.kubelet, c.agent, c.draDriver} {
		if p != nil {
			fmt.Fprintf(&b, "--- %s (tail)\n%s\n", p.Name, p.Logs.Tail(3000))
		}
	}
	return b.String()
}

// Stop tears the cluster down: the agent and kubelet, every pod's
// containers, containerd, the scheduler, the controller manager and the API
// server, then
// the mounts and the directory. It is safe to call on a half-started
// cluster.
func (c *Cluster) Stop() {
	if c.agent != nil {
		c.agent.Stop()
	}
	c.StopDRADriver()
	c.StopKubelet()
	if c.containerd != nil {
		c.removePods()
		c.containerd.Stop()
	}
	if c.sched != nil {
		c.sched.Stop()
	}
	if c.kcm != nil {
		c.kcm.Stop()
	}
	if c.API != nil {
		c.API.Stop()
	}
	// The overlays live in the namespace and go with it.
	for i := len(c.mounts) - 1; i >= 0; i-- {
		if err := run("umount", c.mounts[i]); err != nil {
			_ = run("umount", "-l", c.mounts[i])
		}
	}
	removeRunContainerd()
	RemoveKubepodsCgroups()
	removeAgentCgroups()
	unmountUnder(c.Dir)
	_ = os.RemoveAll(c.Dir)
}

// removeRunContainerd removes what containerd 1.6 creates in
// /run/containerd whatever its config says (shim sockets, fifos), and the
// directory itself when that leaves it empty: a host containerd's files
// are never touched.
func removeRunContainerd() {
	for _, p := range []string{"/run/containerd/s", "/run/containerd/fifo"} {
		_ = os.RemoveAll(p)
	}
	_ = os.Remove("/run/containerd/runc/k8s.io") // only when empty
	_ = os.Remove("/run/containerd/runc")
	_ = os.Remove("/run/containerd")
}

// RemoveKubepodsCgroups removes the kubelet's empty kubepods cgroups in
// every hierarchy, bottom-up. rmdir of a cgroup that still has processes
// fails, so nothing running is touched.
func RemoveKubepodsCgroups() {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
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

// removePods stops and removes every container and sandbox through the
// CRI, so no container process or cgroup outlives the cluster.
func (c *Cluster) removePods() { removePodsAt(c.ContainerdSocket()) }

// removePodsAt stops and removes every container and sandbox of the
// containerd at sock.
func removePodsAt(sock string) {
	ctr := func(args ...string) string {
		out, _ := exec.Command("ctr", append([]string{"-a", sock, "-n", "k8s.io"}, args...)...).Output()
		return string(out)
	}
	for _, id := range strings.Fields(ctr("tasks", "ls", "-q")) {
		_ = exec.Command("ctr", "-a", sock, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id).Run()
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.TrimSpace(ctr("tasks", "ls", "-q")) != "" && time.Now().Before(deadline) {
		for _, id := range strings.Fields(ctr("tasks", "ls", "-q")) {
			_ = exec.Command("ctr", "-a", sock, "-n", "k8s.io", "tasks", "delete", "-f", id).Run()
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, id := range strings.Fields(ctr("containers", "ls", "-q")) {
		_ = exec.Command("ctr", "-a", sock, "-n", "k8s.io", "containers", "delete", id).Run()
	}
}

// unmountUnder unmounts whatever is still mounted below dir (snapshots,
// sandbox shm), deepest first.
func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		if err := run("umount", points[i]); err != nil {
			_ = run("umount", "-l", points[i])
		}
	}
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// wait polls check until it returns nil or the timeout ends.
func wait(ctx context.Context, timeout time.Duration, what string, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not ready after %s: %w", what, timeout, errors.Join(err, ctx.Err()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
