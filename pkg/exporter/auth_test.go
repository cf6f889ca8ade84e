package exporter_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/pkg/exporter"
	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

// TestKubeAuthAgainstAPIServer guards /metrics with a real API server's
// TokenReview and SubjectAccessReview, with real service-account tokens: a
// scraper bound to get /metrics is served, a tenant's token is forbidden,
// no token or a forged one is unauthorized, probes stay open, and an API
// server that cannot answer closes the door (503), while an answer already
// given holds for its minute.
func TestKubeAuthAgainstAPIServer(t *testing.T) {
	t.Parallel()
	srv := apiserver.Start(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	token := map[string]string{}
	for _, sa := range []string{"prometheus", "tenant"} {
		if _, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		exp := int64(600)
		tr, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, sa, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		token[sa] = tr.Status.Token
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "gpuslice-metrics-reader"},
		Rules:      []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "gpuslice-metrics-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "gpuslice-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "prometheus", Namespace: "default"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client, err := kube.New(srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	inner := http.NewServeMux()
	inner.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	web := httptest.NewServer(exporter.KubeAuth(inner, client, slog.New(slog.DiscardHandler)))
	defer web.Close()
	get := func(path, tok string) int {
		req, _ := http.NewRequest(http.MethodGet, web.URL+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	// RBAC takes a moment to reach the authorizer's cache.
	deadline := time.Now().Add(20 * time.Second)
	for get("/metrics", token["prometheus"]) != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("the bound scraper was never allowed")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, tc := range []struct {
		what, path, token string
		want              int
	}{
		{"the bound scraper", "/metrics", token["prometheus"], http.StatusOK},
		{"a tenant's service account", "/metrics", token["tenant"], http.StatusForbidden},
		{"the scraper on another path", "/debug", token["prometheus"], http.StatusForbidden},
		{"no token", "/metrics", "", http.StatusUnauthorized},
		{"a forged token", "/metrics", "forged.token.value", http.StatusUnauthorized},
		{"the liveness probe", "/healthz", "", http.StatusOK},
		{"the readiness probe", "/readyz", "", http.StatusOK},
	} {
		if got := get(tc.path, tc.token); got != tc.want {
			t.Errorf("%s: %s got %d, want %d", tc.what, tc.path, got, tc.want)
		}
	}
	srv.Stop()
	if got := get("/metrics", "another.forged.token"); got != http.StatusServiceUnavailable {
		t.Errorf("a new token with the API server down: %d, want 503", got)
	}
	if got := get("/metrics", token["prometheus"]); got != http.StatusOK {
		t.Errorf("the scraper's cached answer with the API server down: %d, want 200", got)
	}
	// The tenant's denial is cached for 10 s: 403 if stopping the API
	// server took less, 503 after; never the metrics.
	if got := get("/metrics", token["tenant"]); got != http.StatusForbidden && got != http.StatusServiceUnavailable {
		t.Errorf("the tenant with the API server down: %d, want 403 or 503", got)
	}
}

// hangingReviewer is an API server that never answers a token review
// until released, counting the reviews it holds.
type hangingReviewer struct {
	mu      sync.Mutex
	held    int
	release chan struct{}
}

func (h *hangingReviewer) ReviewToken(ctx context.Context, _ string) (kube.User, bool, error) {
	h.mu.Lock()
	h.held++
	h.mu.Unlock()
	select {
	case <-h.release:
		return kube.User{}, false, nil
	case <-ctx.Done():
		return kube.User{}, false, ctx.Err()
	}
}

func (h *hangingReviewer) Authorize(context.Context, kube.User, string, string) (bool, error) {
	return false, nil
}

// The attack: a client sends a new token with every request, against an
// API server that hangs. The agent asks at most MaxReviewsInFlight reviews
// at once and turns the rest away at once with 503; none is served.
func TestKubeAuthBoundsReviews(t *testing.T) {
	t.Parallel()
	r := &hangingReviewer{release: make(chan struct{})}
	inner := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("metrics")) })
	h := exporter.KubeAuth(inner, r, slog.New(slog.DiscardHandler))
	const clients = 20
	codes := make(chan int, clients)
	for i := range clients {
		go func() {
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			req.RemoteAddr = fmt.Sprintf("10.0.0.%d:40000", i+1) // each its own source: the global bound is what is tested
			req.Header.Set("Authorization", fmt.Sprintf("Bearer token-%d", i))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			codes <- rec.Code
		}()
	}
	// Those past the bound answer without waiting for the API server.
	turnedAway := 0
	for turnedAway < clients-exporter.MaxReviewsInFlight {
		select {
		case c := <-codes:
			if c != http.StatusServiceUnavailable {
				t.Fatalf("a request past the bound got %d, want 503", c)
			}
			turnedAway++
		case <-time.After(10 * time.Second):
			t.Fatalf("%d requests turned away; the rest wait on the hanging API server", turnedAway)
		}
	}
	r.mu.Lock()
	held := r.held
	r.mu.Unlock()
	if held > exporter.MaxReviewsInFlight {
		t.Errorf("%d reviews asked at once, want at most %d", held, exporter.MaxReviewsInFlight)
	}
	close(r.release) // the API server answers: the tokens are not accepted
	for range exporter.MaxReviewsInFlight {
		if c := <-codes; c != http.StatusUnauthorized {
			t.Errorf("a reviewed forged token got %d, want 401", c)
		}
	}
}

// slowReviewer answers as an API server latency away would: one token is a
// reader's, every other token is made up. It counts the reviews asked.
type slowReviewer struct {
	good    string
	latency time.Duration
	reviews atomic.Int64
}

func (s *slowReviewer) ReviewToken(ctx context.Context, token string) (kube.User, bool, error) {
	s.reviews.Add(1)
	select {
	case <-time.After(s.latency):
	case <-ctx.Done():
		return kube.User{}, false, ctx.Err()
	}
	return kube.User{Username: "system:serviceaccount:monitoring:prometheus"}, token == s.good, nil
}

func (s *slowReviewer) Authorize(context.Context, kube.User, string, string) (bool, error) {
	return true, nil
}

// The attack from the review: 16 clients send made-up bearer tokens as
// fast as they can while Prometheus scrapes with its own. The reviews asked
// of the API server stay within each source's allowance, and Prometheus is
// served every scrape, also when its answer expires in the middle of the
// flood and must be reviewed again. Before, the agent forwarded every
// made-up token and Prometheus lost most scrapes.
func TestForgedTokenFloodKeepsAuthorizedScrapesServed(t *testing.T) {
	t.Parallel()
	r := &slowReviewer{good: "prometheus-token", latency: 2 * time.Millisecond}
	inner := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("metrics")) })
	h := exporter.KubeAuth(inner, r, slog.New(slog.DiscardHandler))
	var offset atomic.Int64 // the test moves time on
	exporter.SetClock(h, func() time.Time { return time.Now().Add(time.Duration(offset.Load())) })
	ask := func(src, token string) int {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.RemoteAddr = src + ":40000"
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var forged atomic.Int64
	for i := range 16 {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if c := ask(fmt.Sprintf("10.0.0.%d", i+1), fmt.Sprintf("made-up-%d-%d", i, n)); c == http.StatusOK {
					t.Errorf("a made-up token was served")
				}
				forged.Add(1)
			}
		})
	}
	start := time.Now()
	served := 0
	for i := range 40 {
		if i == 20 {
			offset.Add(int64(2 * time.Minute)) // Prometheus's answer expires
		}
		if ask("10.1.0.1", r.good) == http.StatusOK {
			served++
		}
		time.Sleep(25 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	if served != 40 {
		t.Errorf("Prometheus served %d of 40 scrapes under the flood", served)
	}
	// Each flooding source may cause its burst, its rate, and its burst
	// again once the clock moved on; the reader two reviews (the first,
	// and the renewal).
	limit := int64(16*(2*exporter.ReviewBurst+exporter.ReviewsPerSecond*int(elapsed.Seconds()+1)) + 2)
	if got := r.reviews.Load(); got > limit {
		t.Errorf("%d reviews asked for %d requests with made-up tokens, want at most %d", got, forged.Load(), limit)
	}
	t.Logf("%d requests with made-up tokens, %d reviews asked", forged.Load(), r.reviews.Load())
}
