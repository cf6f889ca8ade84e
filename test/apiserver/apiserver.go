// Package apiserver starts a real etcd and kube-apiserver on loopback for
// tests, from the binaries test/e2e/build-k8s.sh builds and caches. Tests
// that need a Kubernetes API get the real one, not a fake.
package apiserver

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/pkg/kube"
)

// Version is the Kubernetes release the tier runs; build-k8s.sh pins the same.
const (
	Version     = "v1.33.13"
	EtcdVersion = "v3.5.21"
)

// BinDir returns where build-k8s.sh caches the binaries.
func BinDir() string {
	base := os.Getenv("GPUSLICE_CACHE")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache", "gpuslice")
	}
	return filepath.Join(base, "k8s-"+Version+"-etcd-"+EtcdVersion)
}

// Server is a running etcd and kube-apiserver.
type Server struct {
	// URL is the API server's address.
	URL string
	// Token authenticates as a cluster admin (group system:masters).
	Token string
	// Kubeconfig is a kubeconfig file for the admin.
	Kubeconfig string
	// Dir holds the server's files.
	Dir string
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

type logBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if len(l.buf) > 1<<20 {
		l.buf = l.buf[len(l.buf)-1<<20:]
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

// start runs a process, stopping it with SIGTERM (a second one after 5 s,
// as the API server sometimes ignores the first) when the test ends.
func start(t testing.TB, name string, args ...string) *logBuffer {
	t.Helper()
	logs := &logBuffer{}
	cmd := exec.Command(filepath.Join(BinDir(), name), args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
		if t.Failed() {
			t.Logf("%s log (tail):\n%s", name, tail(logs.String(), 4000))
		}
	})
	return logs
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Start starts etcd and kube-apiserver and waits until the API is ready.
// Without the binaries it skips the test, unless GPUSLICE_REQUIRE_APISERVER
// is set (as CI does), when it fails it.
func Start(t testing.TB) *Server {
	t.Helper()
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(BinDir(), b)); err != nil {
			msg := fmt.Sprintf("%s not built (run test/e2e/build-k8s.sh etcd kube-apiserver): %v", b, err)
			if os.Getenv("GPUSLICE_REQUIRE_APISERVER") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	dir := t.TempDir()
	etcdClient, etcdPeer, apiPort := freePort(t), freePort(t), freePort(t)
	start(t, "etcd", "--data-dir="+filepath.Join(dir, "etcd"), "--name=default",
		fmt.Sprintf("--listen-client-urls=http://127.0.0.1:%d", etcdClient),
		fmt.Sprintf("--advertise-client-urls=http://127.0.0.1:%d", etcdClient),
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-cluster=default=http://127.0.0.1:%d", etcdPeer),
		"--log-level=warn", "--quota-backend-bytes=1073741824")

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	saKey := write("sa.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	saPub := write("sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	s := &Server{URL: fmt.Sprintf("https://127.0.0.1:%d", apiPort), Token: hex.EncodeToString(tok), Dir: dir}
	tokens := write("tokens.csv", []byte(s.Token+",admin,admin,system:masters\n"))
	logs := start(t, "kube-apiserver",
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdClient),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port="+strconv.Itoa(apiPort),
		"--cert-dir="+filepath.Join(dir, "certs"), "--token-auth-file="+tokens,
		"--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file="+saPub,
		"--service-account-signing-key-file="+saKey, "--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=RBAC", "--enable-priority-and-fairness=false", "--v=0",
		// No controller manager creates default service accounts here:
		// let tests create pods without them.
		"--disable-admission-plugins=ServiceAccount",
		// As on kubeadm clusters: node agents run privileged.
		"--allow-privileged=true")
	s.Kubeconfig = write("kubeconfig", []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
`, s.URL, s.Token)))

	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a loopback test server with a self-signed certificate
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.Token)
		resp, err := c.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready within 60s: %v\n%s", err, tail(logs.String(), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Clientset returns a full client-go clientset for the admin, for tests'
// own checks of the API server's state.
func (s *Server) Clientset(t testing.TB) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Client returns the agent's own minimal client for the admin.
func (s *Server) Client(t testing.TB) *kube.Client {
	t.Helper()
	c, err := kube.New(s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
