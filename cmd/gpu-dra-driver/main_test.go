package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestBadConfigIsOneClearError: every bad input is refused before
// anything starts, with one line naming the flag, and exit code 2.
func TestBadConfigIsOneClearError(t *testing.T) {
	t.Parallel()
	node := map[string]string{"NODE_NAME": "n1"}
	for name, tc := range map[string]struct {
		args []string
		env  map[string]string
		want string
	}{
		"no node name":                  {args: nil, env: nil, want: "--node-name"},
		"unknown backend":               {args: []string{"--gpu-backend=cuda"}, env: node, want: "--gpu-backend"},
		"negative slices":               {args: []string{"--slices-per-gpu=-1"}, env: node, want: "slicing"},
		"both slicing flags":            {args: []string{"--slices-per-gpu=4", "--slice-memory=10Gi"}, env: node, want: "not both"},
		"bad slice memory":              {args: []string{"--slice-memory=lots"}, env: node, want: "--slice-memory"},
		"relative state":                {args: []string{"--dra-prepared-claims=prepared.json"}, env: node, want: "--dra-prepared-claims"},
		"relative cdi dir":              {args: []string{"--cdi-dir=cdi"}, env: node, want: "--cdi-dir"},
		"relative pod-resources socket": {args: []string{"--pod-resources-socket=kubelet.sock"}, env: node, want: "--pod-resources-socket"},
		"zero qps":                      {args: []string{"--kube-api-qps=0"}, env: node, want: "--kube-api-qps"},
		"bad log level":                 {args: []string{"--log-level=loud"}, env: node, want: "--log-level"},
		"stray argument":                {args: []string{"extra"}, env: node, want: "unexpected"},
		"unknown flag":                  {args: []string{"--slices=4"}, env: node, want: "slices"},
		"negative recovery":             {args: []string{"--xid-recovery=-1s"}, env: node, want: "--xid-recovery"},
		"missing fake file":             {args: []string{"--gpu-backend=fake", "--fake-config=/nonexistent.yaml"}, env: node, want: "nonexistent"},
		"unknown fatal taint effect":    {args: []string{"--taint-effect-fatal=Evict"}, env: node, want: "--taint-effect-fatal"},
		"node taint effect on a device": {args: []string{"--taint-effect-recoverable=PreferNoSchedule"}, env: node, want: "--taint-effect-recoverable"},
		"bad fatal XIDs":                {args: []string{"--fatal-xids=79,x"}, env: node, want: "fatal-xids"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var out, errb bytes.Buffer
			dir := t.TempDir()
			args := append([]string{"--dra-prepared-claims=" + filepath.Join(dir, "p.json"), "--kubeconfig=" + filepath.Join(dir, "none")}, tc.args...)
			code := run(args, env(tc.env), &out, &errb)
			lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
			if code == exitOK || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("run(%q) = %d, stderr %q; want a failure naming %q", tc.args, code, errb.String(), tc.want)
			}
			if code != exitConfig || len(lines) != 1 {
				t.Errorf("config error in %d lines: %q", len(lines), errb.String())
			}
			if entries, _ := os.ReadDir(dir); len(entries) > 0 {
				t.Errorf("a refused start left files: %v", entries)
			}
		})
	}
	var out bytes.Buffer
	if code := run([]string{"--help"}, env(nil), &out, &out); code != exitOK || !strings.Contains(out.String(), "--slices-per-gpu") {
		t.Errorf("--help = %d, %q", code, out.String())
	}
}

// driverProc is the real binary, started against a real API server on the
// fake GPU node.
type driverProc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
}

func (d *driverProc) logs() string { d.mu.Lock(); defer d.mu.Unlock(); return d.stderr.String() }

type lockedWriter struct{ d *driverProc }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	return w.d.stderr.Write(p)
}

func startDriver(t *testing.T, bin string, args ...string) *driverProc {
	t.Helper()
	d := &driverProc{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	d.cmd.Stderr = lockedWriter{d}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		<-d.done
	})
	return d
}

// TestDriverOnTheAPIServer runs the binary on the fake GPU node against
// kube-apiserver: it publishes the node's GPUs; an XID written into the
// fake node's file taints the GPU's device and recovery untaints it; a
// second driver on the node waits for the first's lock; SIGTERM stops the
// first cleanly and the second takes over.
func TestDriverOnTheAPIServer(t *testing.T) {
	srv := apiserver.Start(t)
	rc, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(rc)
	ctx := context.Background()
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "gpu-dra-driver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dir, err := os.MkdirTemp("", "drv") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	fake := filepath.Join(dir, "node.yaml")
	base := "preset: H100-80GB\ncount: 2\n"
	if err := os.WriteFile(fake, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--gpu-backend=fake", "--fake-config=" + fake, "--kubeconfig=" + srv.Kubeconfig, "--node-name=n1",
		"--kubelet-registrar-dir=" + filepath.Join(dir, "reg"), "--kubelet-plugin-dir=" + filepath.Join(dir, "plugin"),
		"--cdi-dir=" + filepath.Join(dir, "cdi"), "--dra-prepared-claims=" + filepath.Join(dir, "prepared.json"), "--slices-per-gpu=4", "--log-format=json"}
	for _, sub := range []string{"reg", "plugin", "cdi"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	first := startDriver(t, bin, append(args, "--health-address="+freeAddr(t))...)
	waitTaints(t, first, cs, map[string]string{"gpu-0": "", "gpu-1": ""})
	// Its memory, for the chart's requests (docs/dra.md): logged, not judged.
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", first.cmd.Process.Pid)); err == nil {
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "VmRSS:") || strings.HasPrefix(l, "VmHWM:") {
				t.Logf("gpu-dra-driver serving 2 GPUs: %s", strings.Join(strings.Fields(l), " "))
			}
		}
	}

	if err := os.WriteFile(fake, []byte(base+"faults:\n  gpus:\n    - index: 1\n      xid: 79\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitTaints(t, first, cs, map[string]string{"gpu-0": "", "gpu-1": "xid-79"})
	if err := os.WriteFile(fake, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	waitTaints(t, first, cs, map[string]string{"gpu-0": "", "gpu-1": ""})

	probes := freeAddr(t)
	second := startDriver(t, bin, append(args, "--health-address="+probes)...)
	waitLog(t, second, "holds this node's lock")
	// Waiting, it is alive for the kubelet and not ready, saying why.
	if code, _ := get(t, "http://"+probes+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz of the waiting driver = %d, want 200", code)
	}
	if code, body := get(t, "http://"+probes+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the node lock") {
		t.Errorf("/readyz of the waiting driver = %d %q, want 503 naming the lock", code, body)
	}
	if err := first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("SIGTERM did not stop the driver:\n%s", first.logs())
	}
	if code := first.cmd.ProcessState.ExitCode(); code != exitOK {
		t.Errorf("exit code %d after SIGTERM:\n%s", code, first.logs())
	}
	waitLog(t, second, `"msg":"serving"`)
	if code, body := get(t, "http://"+probes+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz of the serving driver = %d %q, want 200", code, body)
	}
}

// freeAddr is a loopback address no one listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// get asks url as the kubelet's probe does, with a one-second timeout.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func waitLog(t *testing.T, d *driverProc, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(d.logs(), want) {
		select {
		case <-d.done:
			t.Fatalf("the driver exited before logging %q:\n%s", want, d.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the driver never logged %q:\n%s", want, d.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitTaints waits until the node's ResourceSlice holds exactly the
// devices given, each with gpuslice's taint value ("" for none).
func waitTaints(t *testing.T, d *driverProc, cs kubernetes.Interface, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got map[string]string
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			t.Fatalf("the driver exited:\n%s", d.logs())
		default:
		}
		list, err := cs.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=n1"})
		if err == nil && len(list.Items) == 1 {
			got = map[string]string{}
			for _, dev := range list.Items[0].Spec.Devices {
				got[dev.Name] = ""
				for _, taint := range dev.Taints {
					if taint.Key == dra.UnhealthyTaintKey {
						got[dev.Name] = taint.Value
					}
				}
			}
			if len(got) == len(want) && func() bool {
				for k, v := range want {
					if w, ok := got[k]; !ok || w != v {
						return false
					}
				}
				return true
			}() {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("devices and taints %v, want %v\n%s", got, want, d.logs())
}

// TestDevicePluginGPUsFromPodResources: which GPUs (kubeletstate.SlicedGPUsReader, as the driver wires it) nvidia.com/vgpu pods
// hold comes from the kubelet's pod-resources answer: a GPU is held while
// a pod's slices are on it and free once they are released (the device
// manager's checkpoint would have kept it), and a kubelet whose answer
// never comes is an error, so the driver refuses every claim rather than
// guess.
func TestDevicePluginGPUsFromPodResources(t *testing.T) {
	node := kubeletstub.StartNode(t, fakegpu.Config{Preset: "A100-40GB", Count: 2}, 4)
	o := podresources.DefaultOptions()
	o.Socket, o.CallTimeout = node.PodResourcesSocket, 500*time.Millisecond
	client, err := podresources.New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	held := kubeletstate.SlicedGPUsReader(client, nil, contract.ResourceName, nil)
	if got, err := held(); err != nil || len(got) != 0 {
		t.Fatalf("no pod: held %v, %v", got, err)
	}
	a, err := node.Connection.Allocate(context.Background(), "ml/a", "main", 2)
	if err != nil {
		t.Fatal(err)
	}
	slice, err := vgpu.ParseSliceID(a.DeviceIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	if got, err := held(); err != nil || len(got) != 1 || !got[slice.UUID] {
		t.Fatalf("a pod on %s: held %v, %v", slice.UUID, got, err)
	}
	node.Connection.Release("ml/a", "main")
	if got, err := held(); err != nil || len(got) != 0 {
		t.Fatalf("the pod gone: held %v, %v", got, err)
	}
	hung := make(chan struct{})
	defer close(hung)
	node.PodResources.SetListHook(func() { <-hung })
	if got, err := held(); err == nil {
		t.Fatalf("a kubelet that never answers: held %v and no error", got)
	}
}
