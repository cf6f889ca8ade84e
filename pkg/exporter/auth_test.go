package exporter_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
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
