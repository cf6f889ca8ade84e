// Package apiserver starts a real etcd and kube-apiserver on loopback for
// tests, from the binaries test/e2e/build-k8s.sh builds and caches. Tests
// that need a Kubernetes API get the real one, not a fake.
package apiserver

import (
	"cmp"
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

// DefaultVersion is the Kubernetes release the tiers run unless
// K8S_VERSION names another; build-k8s.sh has the same default.
const DefaultVersion = "v1.37.2"

// Version is the Kubernetes release the tiers run: K8S_VERSION, or
// DefaultVersion.
func Version() string {
	if v := os.Getenv("K8S_VERSION"); v != "" {
		return v
	}
	return DefaultVersion
}

// BinDir returns where build-k8s.sh caches the binaries of Version.
func BinDir() string {
	base := os.Getenv("GPUSLICE_CACHE")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache", "gpuslice")
	}
	return filepath.Join(base, "k8s-"+Version())
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
	// ServiceAccountKey is the private key service-account tokens are
	// signed with, for a controller manager.
	ServiceAccountKey string
	// CAFile is the CA that signed the API server's serving certificate
	// (valid for 127.0.0.1, localhost and the kubernetes Service), for a
	// controller manager's --root-ca-file and so for pods' in-cluster
	// config.
	CAFile string

	procs []*Process
}

// FreePort returns a loopback TCP port free at the time of the call.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// LogBuffer keeps the last MiB a process wrote.
type LogBuffer struct {
	mu  sync.Mutex
	buf []byte
}

// Write implements io.Writer.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if len(l.buf) > 1<<20 {
		l.buf = l.buf[len(l.buf)-1<<20:]
	}
	return len(p), nil
}

// String returns what was kept.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

// Tail returns the last n bytes of what was kept.
func (l *LogBuffer) Tail(n int) string {
	s := l.String()
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Process is a started process of the tier, stopped by PID.
type Process struct {
	// Name names it in errors and logs.
	Name string
	// Logs holds its stdout and stderr.
	Logs *LogBuffer
	cmd  *exec.Cmd
	done chan struct{}
}

// StartProcess starts path with args, its output in Logs.
func StartProcess(name, path string, args ...string) (*Process, error) {
	p := &Process{Name: name, Logs: &LogBuffer{}, cmd: exec.Command(path, args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.Logs, p.Logs
	// If the test binary dies (a panic, a timeout), so does the process.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// PID is the process's ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, a second one after 5 s (the API server sometimes
// ignores the first while clients are connected), and SIGKILL after 10 s,
// and waits for the process to end.
func (p *Process) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(5 * time.Second):
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Kill ends the process with SIGKILL and waits for it.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Missing names the cached binaries that are not built yet.
func Missing(bins ...string) []string {
	var out []string
	for _, b := range bins {
		if _, err := os.Stat(filepath.Join(BinDir(), b)); err != nil {
			out = append(out, b)
		}
	}
	return out
}

// Start starts etcd and kube-apiserver and waits until the API is ready.
// Without the binaries it skips the test, unless GPUSLICE_REQUIRE_APISERVER
// is set (as CI does), when it fails it.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	if missing := Missing("etcd", "kube-apiserver"); len(missing) > 0 {
		msg := fmt.Sprintf("%v not built (run test/e2e/build-k8s.sh etcd kube-apiserver)", missing)
		if os.Getenv("GPUSLICE_REQUIRE_APISERVER") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s, err := Launch(t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range s.procs {
				t.Logf("%s log (tail):\n%s", p.Name, p.Logs.Tail(4000))
			}
		}
		s.Stop()
	})
	return s
}

// Options configure Launch.
type Options struct {
	// ServiceAccounts turns on the ServiceAccount admission plugin, as on
	// any real cluster: pods get their service account's token. It needs a
	// controller manager (default service accounts, the root CA ConfigMap);
	// off, pods are created without service accounts or tokens.
	ServiceAccounts bool
	// AuditLog, when set, is where the API server writes an audit event
	// (level Metadata, JSON lines) for every request as it completes, and
	// as a watch starts: an independent count of what clients ask.
	AuditLog string
	// Address is the IPv4 address the API server binds and advertises,
	// 127.0.0.1 when empty: a multi-node cluster binds it to the address
	// of the bridge its nodes' network namespaces reach it through.
	Address string
}

// auditPolicy logs every request's metadata at its response stages.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
`

// Launch starts etcd and kube-apiserver with their files in dir and waits
// until the API is ready. The caller stops them with Stop.
func Launch(dir string, o Options) (s *Server, err error) {
	s = &Server{Dir: dir}
	// The returns below set s to nil: stop what was started through a copy
	// (stopping the nil one panicked and hid the error that caused it).
	started := s
	defer func() {
		if err != nil {
			started.Stop()
		}
	}()
	// The credentials are written here while etcd starts: the directory
	// must not wait for etcd to create it (under load it did not, and the
	// start failed writing sa.key).
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	addr := cmp.Or(o.Address, "127.0.0.1")
	ip := net.ParseIP(addr).To4()
	if ip == nil {
		return nil, fmt.Errorf("api server address %q is not an IPv4 address", addr)
	}
	etcd, err := StartProcess("etcd", filepath.Join(BinDir(), "etcd"), "--data-dir="+filepath.Join(dir, "etcd"), "--name=default",
		fmt.Sprintf("--listen-client-urls=http://127.0.0.1:%d", etcdClient),
		fmt.Sprintf("--advertise-client-urls=http://127.0.0.1:%d", etcdClient),
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-cluster=default=http://127.0.0.1:%d", etcdPeer),
		"--log-level=warn", "--quota-backend-bytes=1073741824")
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, etcd)
	s.URL = fmt.Sprintf("https://%s:%d", addr, apiPort)
	f, err := s.writeCredentials(ip)
	if err != nil {
		return nil, err
	}
	admission := "--disable-admission-plugins=ServiceAccount"
	if o.ServiceAccounts {
		admission = "--enable-admission-plugins=ServiceAccount"
	}
	var audit []string
	if o.AuditLog != "" {
		policy := filepath.Join(dir, "audit-policy.yaml")
		if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
			return nil, err
		}
		audit = []string{"--audit-policy-file=" + policy, "--audit-log-path=" + o.AuditLog, "--audit-log-format=json", "--audit-log-mode=blocking"}
	}
	api, err := StartProcess("kube-apiserver", filepath.Join(BinDir(), "kube-apiserver"), append([]string{
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdClient),
		"--bind-address=" + addr, "--advertise-address=" + addr, "--secure-port=" + strconv.Itoa(apiPort),
		// Since 1.36 a loopback address may not be the kubernetes
		// Service's endpoint; nothing here routes Service IPs anyway.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + f.cert, "--tls-private-key-file=" + f.key, "--token-auth-file=" + f.tokens,
		"--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file=" + f.saPub,
		"--service-account-signing-key-file=" + s.ServiceAccountKey, "--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=RBAC", "--enable-priority-and-fairness=false", "--v=0",
		admission,
		// As on kubeadm clusters: node agents run privileged.
		"--allow-privileged=true"}, audit...)...)
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, api)
	if err := s.waitReady(f.ca, api); err != nil {
		return nil, err
	}
	return s, nil
}

// credentialFiles are the files the API server is started with.
type credentialFiles struct {
	cert, key, tokens, saPub string
	ca                       []byte // the CA's PEM
}

// writeCredentials writes the service-account key pair, the admin token,
// the serving certificate and its CA, and a kubeconfig for s.URL.
func (s *Server) writeCredentials(addr net.IP) (credentialFiles, error) {
	var err error
	write := func(name string, data []byte) string {
		p := filepath.Join(s.Dir, name)
		if werr := os.WriteFile(p, data, 0o600); werr != nil && err == nil {
			err = werr
		}
		return p
	}
	key, kerr := rsa.GenerateKey(rand.Reader, 2048)
	if kerr != nil {
		return credentialFiles{}, kerr
	}
	var f credentialFiles
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	s.ServiceAccountKey = write("sa.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	f.saPub = write("sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	s.Token = hex.EncodeToString(tok)
	f.tokens = write("tokens.csv", []byte(s.Token+",admin,admin,system:masters\n"))
	caPEM, certPEM, keyPEM, cerr := ServingCert(addr)
	if cerr != nil {
		return credentialFiles{}, cerr
	}
	f.ca = caPEM
	s.CAFile = write("ca.crt", caPEM)
	f.cert, f.key = write("apiserver.crt", certPEM), write("apiserver.key", keyPEM)
	s.Kubeconfig = write("kubeconfig", []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
`, s.URL, s.CAFile, s.Token)))
	return f, err
}

// waitReady waits for the API server's /readyz, 60 s at most.
func (s *Server) waitReady(caPEM []byte, api *Process) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.Token)
		resp, rerr := c.Do(req)
		if rerr == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) || api.Exited() {
			return fmt.Errorf("kube-apiserver not ready within 60s: %w\n%s", rerr, api.Logs.Tail(4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the API server, then etcd.
func (s *Server) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Stop()
	}
	s.procs = nil
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

// Version returns the API server's version, e.g. "v1.37.2".
func (s *Server) Version() (string, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return "", err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	v, err := c.Discovery().ServerVersion()
	if err != nil {
		return "", err
	}
	return v.GitVersion, nil
}
