package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// agentBin is the gpu-agent binary built once for the process tests.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gpu-agent-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "gpu-agent")
	build := exec.Command("go", "build", "-o", agentBin, ".")
	build.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build gpu-agent: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer is a bytes.Buffer safe for the process's writes and our reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

type agentProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

func startAgent(t *testing.T, args ...string) *agentProc {
	t.Helper()
	return startAgentWith(t, func(args ...string) *exec.Cmd { return exec.Command(agentBin, args...) }, args...)
}

// startAgentWith starts the agent with args through command, which makes
// the command line (for example, to start it in a cgroup namespace).
func startAgentWith(t *testing.T, command func(args ...string) *exec.Cmd, args ...string) *agentProc {
	t.Helper()
	// Never the host's /var/lib/gpuslice: each agent records throttled
	// containers in a state file of the test's own, unless told otherwise.
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--enforcement-state") }) {
		args = append(args, "--enforcement-state="+filepath.Join(t.TempDir(), "enforcement.json"))
	}
	// Never the default :9447, which every agent of a parallel test wants.
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--health-address") }) {
		args = append(args, "--health-address=127.0.0.1:0")
	}
	p := &agentProc{cmd: command(args...), stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("agent stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

func (p *agentProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case err := <-p.done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not exit within 15s")
		return -1
	}
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func get(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestAgentProcessLifecycle(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fake := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(fake, []byte("preset: H100-80GB\ncount: 2\nseed: test-node\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	// The agent starts before the kubelet: it must wait and register when
	// kubelet.sock appears, not fail.
	a := startAgent(t, "--gpu-backend=fake", "--fake-config="+fake, "--device-plugin-dir="+dir,
		"--metrics-address="+addr, "--slice-memory=20Gi", "--log-format=json")
	deadline := time.Now().Add(15 * time.Second)
	for get("http://"+addr+"/healthz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("healthz never answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := get("http://" + addr + "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz before registration = %d, want 503", code)
	}
	k, err := kubeletstub.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	p, err := k.WaitPlugin(ctxT(t), "nvidia.com/vgpu")
	if err != nil {
		t.Fatal(err)
	}
	// H100 80GB reports 81559 MiB: three 20 GiB slices each.
	if n := len(p.Devices()); n != 6 {
		t.Fatalf("%d devices, want 6", n)
	}
	if code := get("http://" + addr + "/readyz"); code != http.StatusOK {
		t.Errorf("readyz after registration = %d, want 200", code)
	}
	alloc, err := p.Allocate(ctxT(t), "pod", "main", 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := alloc.Response.Envs["GPUSLICE_MEMORY_LIMIT_BYTES"]; got != fmt.Sprint(40<<30) {
		t.Errorf("memory limit env = %q", got)
	}

	// A fault written to the fake config reaches the kubelet.
	if err := os.WriteFile(fake, []byte("preset: H100-80GB\ncount: 2\nseed: test-node\nfaults: {gpus: [{index: 1, xid: 79}]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := k.WaitFor(ctxT(t), func(k *kubeletstub.Kubelet) bool {
		return kubeletstub.CountHealth(k.PluginLocked("nvidia.com/vgpu").DevicesLocked(), pluginapi.Unhealthy) == 3
	}); err != nil {
		t.Fatalf("XID from fake config never marked GPU 1's slices unhealthy: %v", err)
	}

	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := a.wait(t); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0", code)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "gpuslice*.sock")); len(left) != 0 {
		t.Errorf("plugin socket left behind: %v", left)
	}
	logs := a.stderr.String()
	for _, want := range []string{`"msg":"registered with kubelet"`, `"msg":"gpu unhealthy"`, `"xid":79`, `"msg":"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

func TestAgentBadConfigStartsNothing(t *testing.T) {
	t.Parallel()
	tests := map[string][]string{
		"unknown flag":  {"--slices=4"},
		"bad backend":   {"--gpu-backend=cuda"},
		"bad slicing":   {"--gpu-backend=fake", "--slices-per-gpu=0", "--slice-memory=0"},
		"bad placement": {"--gpu-backend=fake", "--placement=random"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			addr := freePort(t)
			a := startAgent(t, append(args, "--device-plugin-dir="+dir, "--metrics-address="+addr)...)
			if code := a.wait(t); code != 2 {
				t.Fatalf("exit code = %d, want 2", code)
			}
			out := a.stderr.String()
			if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "gpu-agent: ") {
				t.Errorf("stderr = %q, want one line starting gpu-agent:", out)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("plugin dir has %d entries after a config error", len(entries))
			}
		})
	}
}

func TestAgentLostGPUAtStartOffersTheOthers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fake := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(fake, []byte("preset: A100-40GB\ncount: 4\nfaults: {gpus: [{index: 2, lost: true}]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := kubeletstub.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	startAgent(t, "--gpu-backend=fake", "--fake-config="+fake, "--device-plugin-dir="+dir, "--metrics-address="+freePort(t), "--slices-per-gpu=4")
	p, err := k.WaitPlugin(ctxT(t), "nvidia.com/vgpu")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(p.Devices()); n != 12 {
		t.Fatalf("%d devices, want 12 (GPU 2 is lost)", n)
	}
	if _, err := p.Allocate(ctxT(t), "pod", "main", 4); err != nil {
		t.Fatalf("allocation on the healthy GPUs failed: %v", err)
	}
}

func TestAgentPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	dir := t.TempDir()
	a := startAgent(t, "--gpu-backend=fake", "--device-plugin-dir="+dir, "--metrics-address="+l.Addr().String())
	if code := a.wait(t); code != 1 {
		t.Fatalf("exit code = %d, want 1", code)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("plugin dir has %d entries after a failed start", len(entries))
	}
}

// TestAgentOnNVMLBackend runs the agent on its real NVML code path, with
// the fake libnvidia-ml.so.1 in front of a fake node.
func TestAgentOnNVMLBackend(t *testing.T) {
	t.Parallel()
	lib, err := fakegpu.BuildNVMLLibrary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	node, err := fakegpu.New(fakegpu.PresetConfig("H200-141GB", 2))
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "nvml-state")
	if err := node.WriteNVMLState(state); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	k, err := kubeletstub.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	a := &agentProc{cmd: exec.Command(agentBin, "--nvml-library="+lib, "--device-plugin-dir="+dir, "--metrics-address="+freePort(t), "--health-address=127.0.0.1:0",
		"--slices-per-gpu=7", "--health-probe-interval=50ms", "--enforcement-state="+filepath.Join(t.TempDir(), "e.json")),
		stderr: &syncBuffer{}, done: make(chan error, 1)}
	a.cmd.Env = append(os.Environ(), fakegpu.NVMLStateEnv+"="+state)
	a.cmd.Stderr = a.stderr
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	defer func() {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		if code := a.wait(t); code != 0 {
			t.Errorf("exit code %d\n%s", code, a.stderr.String())
		}
	}()
	p, err := k.WaitPlugin(ctxT(t), "nvidia.com/vgpu")
	if err != nil {
		t.Fatalf("%v\n%s", err, a.stderr.String())
	}
	if n := len(p.Devices()); n != 14 {
		t.Fatalf("%d devices, want 14", n)
	}
	if !strings.Contains(a.stderr.String(), "driver=570.124.06 cuda=12.8") {
		t.Errorf("start log lacks the driver versions read through NVML:\n%s", a.stderr.String())
	}
	if err := node.InjectXID(0, 48); err != nil {
		t.Fatal(err)
	}
	if err := node.WriteNVMLState(state); err != nil {
		t.Fatal(err)
	}
	if err := k.WaitFor(ctxT(t), func(k *kubeletstub.Kubelet) bool {
		return kubeletstub.CountHealth(k.PluginLocked("nvidia.com/vgpu").DevicesLocked(), pluginapi.Unhealthy) == 7
	}); err != nil {
		t.Fatalf("XID through NVML never reached the kubelet: %v\n%s", err, a.stderr.String())
	}
}

// stubbed is a kubelet stand-in serving pod-resources, with a fake GPU
// node file whose workloads report in work.
type stubbed struct {
	kubelet                 *kubeletstub.Kubelet
	dir, podres, fake, work string
	// runtime is containerd's state dir, where tests write each
	// container's bundle.
	runtime string
}

// stubKubelet starts a stand-in in a temp dir and writes the fake node
// (node is the YAML without workloadDir); both end with the test.
func stubKubelet(t *testing.T, node string) *stubbed {
	t.Helper()
	s := &stubbed{dir: t.TempDir(), work: t.TempDir(), fake: filepath.Join(t.TempDir(), "node.yaml"), runtime: t.TempDir()}
	if err := os.WriteFile(s.fake, []byte(node+"workloadDir: "+s.work+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if s.kubelet, err = kubeletstub.Start(s.dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.kubelet.Stop)
	s.podres = filepath.Join(s.dir, "pod-resources.sock")
	pr, err := s.kubelet.ServePodResources(s.podres)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pr.Stop)
	return s
}

// agentArgs are the flags that point an agent at the stand-in.
func (s *stubbed) agentArgs() []string {
	return []string{"--gpu-backend=fake", "--fake-config=" + s.fake, "--device-plugin-dir=" + s.dir, "--pod-resources-socket=" + s.podres,
		"--runtime-state-dirs=" + s.runtime}
}

// agentSocket is the one agent socket in the plugin dir: each agent
// process serves its own gpuslice-<id>.sock.
func agentSocket(tb testing.TB, dir string) string {
	tb.Helper()
	socks, _ := filepath.Glob(filepath.Join(dir, "gpuslice-*.sock"))
	if len(socks) != 1 {
		tb.Fatalf("agent sockets in %s: %v, want one", dir, socks)
	}
	return socks[0]
}

// probe asks the health listener at addr for path as the kubelet does,
// with a one-second timeout.
func probe(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitReady waits for the health listener at addr to report ready.
func waitReady(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := probe(t, addr, "/readyz")
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q, never ready", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The attack from the review: a pod holds idle keep-alive connections to
// the agent's metrics port, every place the server keeps. The kubelet's
// probes go to the health listener (the chart's probes name it) and are
// answered within their one-second timeout. Before, probes shared the
// metrics port and three missed probes had the agent killed.
func TestProbesAnsweredBesideAnIdleConnectionFlood(t *testing.T) {
	t.Parallel()
	st := stubKubelet(t, "preset: A100-40GB\ncount: 1\n")
	metrics, probes := freePort(t), freePort(t)
	startAgent(t, append(st.agentArgs(), "--metrics-address="+metrics, "--health-address="+probes)...)
	waitReady(t, probes)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	for range 128 {
		c, err := net.DialTimeout("tcp", metrics, 2*time.Second)
		if err != nil {
			break // the backlog is full: the flood took every place it could
		}
		held = append(held, c)
	}
	for i := range 3 {
		if code, body := probe(t, probes, "/healthz"); code != http.StatusOK {
			t.Errorf("liveness probe %d beside %d idle connections = %d %s", i, len(held), code, body)
		}
		if code, body := probe(t, probes, "/readyz"); code != http.StatusOK {
			t.Errorf("readiness probe %d beside %d idle connections = %d %s", i, len(held), code, body)
		}
	}
}

// TestOneAgentPerNode starts a second agent on the node of a running one,
// as a force-deleted DaemonSet pod's successor starts: it waits for the
// node lock, serving and enforcing nothing, until the first is killed
// (SIGKILL: the kernel drops the lock), then takes over and registers.
func TestOneAgentPerNode(t *testing.T) {
	t.Parallel()
	st := stubKubelet(t, "preset: A100-40GB\ncount: 1\n")
	state := "--enforcement-state=" + filepath.Join(t.TempDir(), "enforcement.json")
	first := startAgent(t, append(st.agentArgs(), state, "--metrics-address="+freePort(t))...)
	if err := st.kubelet.WaitFor(ctxT(t), func(k *kubeletstub.Kubelet) bool { return k.RegistrationCountLocked() == 1 }); err != nil {
		t.Fatal(err)
	}
	probes := freePort(t)
	second := startAgent(t, append(st.agentArgs(), state, "--metrics-address="+freePort(t), "--health-address="+probes)...)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(second.stderr.String(), "holds this node's lock") {
		if time.Now().After(deadline) {
			t.Fatalf("the second agent did not wait for the node lock:\n%s", second.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Waiting, it is alive for the kubelet's liveness probe (before, it
	// served nothing and was killed every minute) and not ready, saying why.
	if code, _ := probe(t, probes, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz of the waiting agent = %d, want 200", code)
	}
	if code, body := probe(t, probes, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the node lock") {
		t.Errorf("/readyz of the waiting agent = %d %q, want 503 naming the lock", code, body)
	}
	// Waiting, it has registered nothing and serves no socket of its own.
	if n := len(st.kubelet.Registrations()); n != 1 {
		t.Errorf("%d registrations while the second agent waits, want 1", n)
	}
	if socks, _ := filepath.Glob(filepath.Join(st.dir, "gpuslice-*.sock")); len(socks) != 1 {
		t.Errorf("sockets while the second agent waits: %v, want the first's only", socks)
	}
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.wait(t)
	if err := st.kubelet.WaitFor(ctxT(t), func(k *kubeletstub.Kubelet) bool { return k.RegistrationCountLocked() == 2 }); err != nil {
		t.Fatalf("the second agent never registered after the first died: %v\n%s", err, second.stderr.String())
	}
	if !strings.Contains(second.stderr.String(), "node lock taken") {
		t.Errorf("the second agent did not say it took the lock:\n%s", second.stderr.String())
	}
	waitReady(t, probes)
	// The killed agent's socket is gone (removed by its successor), and the
	// successor's is the only one.
	deadline = time.Now().Add(15 * time.Second)
	for {
		socks, _ := filepath.Glob(filepath.Join(st.dir, "gpuslice-*.sock"))
		if len(socks) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sockets after the takeover: %v", socks)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := second.wait(t); code != 0 {
		t.Errorf("second agent exit %d", code)
	}
}

// TestAgentOnAFreshNode starts the agent as the README's "Running on a GPU
// node" does, on a host where its state directory does not exist yet: it
// makes the directory (owner-only) and serves; a state directory that is a
// symbolic link is refused with one clear line.
func TestAgentOnAFreshNode(t *testing.T) {
	t.Parallel()
	st := stubKubelet(t, "preset: H100-80GB\ncount: 1\n")
	dir := filepath.Join(t.TempDir(), "var", "lib", "gpuslice")
	agent := startAgent(t, append(st.agentArgs(), "--metrics-address="+freePort(t), "--enforcement-state="+filepath.Join(dir, "enforcement.json"))...)
	if _, err := st.kubelet.WaitPlugin(ctxT(t), "nvidia.com/vgpu"); err != nil {
		t.Fatalf("the agent never registered on a fresh node: %v\n%s", err, agent.stderr.String())
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory %s: %v, %v; want 0700", dir, fi, err)
	}

	link := filepath.Join(t.TempDir(), "gpuslice")
	if err := os.Symlink(t.TempDir(), link); err != nil {
		t.Fatal(err)
	}
	refused := startAgent(t, append(st.agentArgs(), "--metrics-address="+freePort(t), "--enforcement-state="+filepath.Join(link, "enforcement.json"))...)
	if code := refused.wait(t); code == 0 || !strings.Contains(refused.stderr.String(), "is a symbolic link") {
		t.Errorf("a symlinked state directory: exit %d\n%s", code, refused.stderr.String())
	}
}
