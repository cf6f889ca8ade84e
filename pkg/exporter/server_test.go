package exporter

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"bytes"
	"compress/gzip"
	"net/http/httptest"

	"github.com/gpuslice/gpuslice/pkg/node"
)

func serve(t *testing.T, webConfig string, ready func() bool) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	h := Handler(NewExposition(fixed{snapshot()}, info), nil, ready, slog.New(slog.DiscardHandler))
	go func() { done <- Serve(ctx, lis, h, webConfig, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve() = %v", err)
		}
	})
	return lis.Addr().String()
}

func get(t *testing.T, c *http.Client, url, user, pass string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	var ready atomic.Bool
	addr := serve(t, "", ready.Load)
	c := &http.Client{Timeout: 5 * time.Second}
	if code, _ := get(t, c, "http://"+addr+"/healthz", "", ""); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get(t, c, "http://"+addr+"/readyz", "", ""); code != 503 {
		t.Errorf("/readyz before ready = %d, want 503", code)
	}
	ready.Store(true)
	if code, _ := get(t, c, "http://"+addr+"/readyz", "", ""); code != 200 {
		t.Errorf("/readyz when ready = %d, want 200", code)
	}
	code, body := get(t, c, "http://"+addr+"/metrics", "", "")
	if code != 200 || !strings.Contains(body, `gpuslice_container_gpu_busy_seconds_total{container="main",gpu="0",namespace="ml",pod="b",uuid="GPU-aaa"} 30`) {
		t.Errorf("/metrics = %d:\n%s", code, body)
	}
}

func TestTLSAndBasicAuth(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gpu-agent"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	cfg := filepath.Join(dir, "web.yaml")
	write("web.yaml", []byte("tls_server_config:\n  cert_file: "+filepath.Join(dir, "cert.pem")+"\n  key_file: "+filepath.Join(dir, "key.pem")+
		"\nbasic_auth_users:\n  prometheus: "+string(hash)+"\n"))
	if err := ValidateWebConfig(cfg); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, cfg, func() bool { return true })

	pool := x509.NewCertPool()
	cert, _ := x509.ParseCertificate(der)
	pool.AddCert(cert)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	if code, _ := get(t, c, "https://"+addr+"/metrics", "", ""); code != http.StatusUnauthorized {
		t.Errorf("/metrics without credentials = %d, want 401", code)
	}
	if code, _ := get(t, c, "https://"+addr+"/metrics", "prometheus", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("/metrics with a wrong password = %d, want 401", code)
	}
	if code, body := get(t, c, "https://"+addr+"/metrics", "prometheus", "s3cret"); code != 200 || !strings.Contains(body, "gpuslice_build_info") {
		t.Errorf("/metrics with credentials = %d", code)
	}
	if code, _ := get(t, &http.Client{Timeout: 5 * time.Second}, "http://"+addr+"/metrics", "prometheus", "s3cret"); code == 200 {
		t.Error("plain HTTP served metrics on a TLS listener")
	}
}

func TestValidateWebConfig(t *testing.T) {
	t.Parallel()
	if err := ValidateWebConfig(""); err != nil {
		t.Errorf("empty path = %v", err)
	}
	bad := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(bad, []byte("tls_server_config:\n  cert_file: /nonexistent.pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ValidateWebConfig(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("ValidateWebConfig(bad) = %v, want an error naming the file", err)
	}
	if err := ValidateWebConfig("/nonexistent/web.yaml"); err == nil {
		t.Error("ValidateWebConfig(missing) succeeded")
	}
}

// slowSource makes every scrape take a while, as a node with many
// containers or a loaded machine does.
type slowSource struct{ fixed }

func (s slowSource) Snapshot() *node.Snapshot {
	time.Sleep(300 * time.Millisecond)
	return s.fixed.Snapshot()
}

// TestScrapeFloodIsBounded: many concurrent scrapes get 503 past the
// in-flight bound instead of each holding a rendered body; shutdown is
// not held by clients that never read.
func TestScrapeFloodIsBounded(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	h := Handler(NewExposition(slowSource{fixed{snapshot()}}, info), nil, func() bool { return true }, slog.New(slog.DiscardHandler))
	go func() { done <- Serve(ctx, lis, h, "", slog.New(slog.DiscardHandler)) }()
	url := "http://" + lis.Addr().String() + "/metrics"
	// Clients that send a request and never read the answer, each from its
	// own address (one address gets MetricsBounds.PerSource connections).
	for i := range 8 {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 2, byte(i+1))}}).Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	codes := make(chan int, 40)
	for i := range 40 {
		go func() {
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 3, byte(i+1))}}
			c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
			resp, err := c.Get(url)
			if err != nil {
				codes <- 0
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	count := map[int]int{}
	for range 40 {
		count[<-codes]++
	}
	if count[http.StatusServiceUnavailable] == 0 {
		t.Errorf("status codes %v: no scrape was turned away past %d in flight", count, MaxScrapesInFlight)
	}
	// Once the flood has passed, scrapes are served again.
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no scrape served after the flood: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve() = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("shutdown held by clients that never read")
	}
}

// counter is a Renderer whose exposition is its value, the same length
// every time.
type counter struct{ v atomic.Int64 }

func (c *counter) Append(b []byte) []byte {
	return fmt.Appendf(b, "# TYPE gpuslice_test_value gauge\ngpuslice_test_value %08d\n", c.v.Load())
}

// The exposition is rendered once per key and served from memory until the
// key changes; gzip is served to scrapers that accept it, the same text.
func TestExpositionRenderedOncePerKey(t *testing.T) {
	t.Parallel()
	var c counter
	var key atomic.Int64
	h := Handler(&c, func() any { return key.Load() }, func() bool { return true }, slog.New(slog.DiscardHandler))
	scrape := func(gz bool) string {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		body := rec.Body.Bytes()
		if gz {
			if rec.Header().Get("Content-Encoding") != "gzip" {
				t.Fatal("gzip was accepted but not served")
			}
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		return string(body)
	}
	c.v.Store(1)
	first := scrape(false)
	if !strings.Contains(first, "gpuslice_test_value 00000001") {
		t.Fatalf("first scrape:\n%s", first)
	}
	c.v.Store(2) // the key did not change: the rendering stands
	if got := scrape(true); got != first {
		t.Errorf("same key, new body:\n%s", got)
	}
	key.Add(1)
	if got := scrape(false); !strings.Contains(got, "gpuslice_test_value 00000002") {
		t.Errorf("after the key changed:\n%s", got)
	}
}

// heldWriter keeps what it was given without copying, as a slow network
// write still reading the buffer would, until released.
type heldWriter struct {
	header  http.Header
	got     []byte
	writing chan struct{}
	release chan struct{}
}

func (w *heldWriter) Header() http.Header { return w.header }
func (w *heldWriter) WriteHeader(int)     {}
func (w *heldWriter) Write(p []byte) (int, error) {
	w.got = p
	close(w.writing)
	<-w.release
	return len(p), nil
}

// TestRenderingInUseIsNeverReused: renderings reuse the buffers of earlier
// ones, but never one a request is still writing out, however many new
// samples arrive meanwhile.
func TestRenderingInUseIsNeverReused(t *testing.T) {
	t.Parallel()
	var c counter
	var key atomic.Int64
	h := Handler(&c, func() any { return key.Load() }, func() bool { return true }, slog.New(slog.DiscardHandler))
	c.v.Store(1)
	slow := &heldWriter{header: http.Header{}, writing: make(chan struct{}), release: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(slow, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	}()
	<-slow.writing
	want := string(slow.got)
	for i := range 10 {
		key.Add(1)
		c.v.Store(int64(i + 2))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		if !strings.Contains(rec.Body.String(), fmt.Sprintf("%08d", i+2)) {
			t.Fatalf("scrape %d:\n%s", i, rec.Body.String())
		}
	}
	if got := string(slow.got); got != want {
		t.Errorf("the slow request's body changed under it:\n%s\nwant\n%s", got, want)
	}
	close(slow.release)
	<-done
}

// The attack from the review: a pod opens idle keep-alive connections to
// the metrics port, as many as the server keeps. Another client, here the
// scraper, is still served at once; the attacker's connections past its
// share are closed. Before, the 64 idle connections took every place and
// the next client waited for a minute.
func TestIdleConnectionsOfOneSourceDoNotStarveOthers(t *testing.T) {
	t.Parallel()
	addr := serve(t, "", func() bool { return true })
	attacker := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 2 * time.Second}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	for range MetricsBounds.Total + 8 {
		c, err := attacker.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	c := &http.Client{Timeout: 2 * time.Second}
	if code, body := get(t, c, "http://"+addr+"/metrics", "", ""); code != http.StatusOK {
		t.Errorf("a scrape beside the attacker's idle connections = %d %s, want 200", code, body)
	}
	// A place the server refused is closed: a read ends at once.
	closed := 0
	for _, c := range held {
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, io.EOF) {
			closed++
		}
	}
	if want := len(held) - MetricsBounds.PerSource; closed < want {
		t.Errorf("%d of the attacker's %d connections closed, want at least %d", closed, len(held), want)
	}
}
