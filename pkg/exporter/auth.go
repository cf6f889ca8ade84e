package exporter

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gpuslice/gpuslice/pkg/kube"
)

// Reviewer is the part of the Kubernetes API that guards /metrics: who a
// bearer token belongs to, and whether that user may get a path.
type Reviewer interface {
	ReviewToken(ctx context.Context, token string) (kube.User, bool, error)
	Authorize(ctx context.Context, user kube.User, verb, path string) (bool, error)
}

// How long a review's answer is trusted, and how many are kept.
const (
	allowTTL    = time.Minute
	denyTTL     = 10 * time.Second
	reviewCache = 256
	reviewLimit = 5 * time.Second
	// MaxReviewsInFlight bounds the reviews asked of the API server at
	// once: a client sending a new token with every request cannot turn
	// the agent into a TokenReview flood; past the bound it gets 503.
	MaxReviewsInFlight = 4
)

// KubeAuth guards /metrics as the kubelet and kube-rbac-proxy guard theirs:
// a request needs a bearer token the API server accepts (TokenReview) whose
// user may get the path (SubjectAccessReview, a non-resource URL). No
// token, or a token the API server rejects, is 401; a user without the
// permission is 403; an API server that cannot answer is 503, never an
// open door. /healthz and /readyz stay open for the kubelet's probes.
// Answers are cached by a hash of the token: allowed for a minute, denied
// for ten seconds, at most 256 of them. At most MaxReviewsInFlight reviews
// are asked at once, each for at most 5 s.
func KubeAuth(next http.Handler, r Reviewer, log *slog.Logger) http.Handler {
	return &kubeAuth{next: next, r: r, log: log, cache: map[[32]byte]verdict{}, slots: make(chan struct{}, MaxReviewsInFlight)}
}

type verdict struct {
	status int // http.StatusOK when allowed
	until  time.Time
}

type kubeAuth struct {
	next  http.Handler
	r     Reviewer
	log   *slog.Logger
	mu    sync.Mutex
	cache map[[32]byte]verdict
	slots chan struct{} // reviews in flight
}

func (a *kubeAuth) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/healthz" || req.URL.Path == "/readyz" {
		a.next.ServeHTTP(w, req)
		return
	}
	token, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	token = strings.TrimSpace(token)
	if !ok || token == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="gpuslice"`)
		http.Error(w, "a bearer token is required", http.StatusUnauthorized)
		return
	}
	switch status := a.decide(req.Context(), token, req.URL.Path); status {
	case http.StatusOK:
		a.next.ServeHTTP(w, req)
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="gpuslice"`)
		http.Error(w, "the token was not accepted", status)
	case http.StatusForbidden:
		http.Error(w, "forbidden: the token's user may not get "+req.URL.Path, status)
	default:
		http.Error(w, "cannot check the token now", status)
	}
}

// decide returns the HTTP status for a token and path, from the cache or
// the API server.
func (a *kubeAuth) decide(ctx context.Context, token, path string) int {
	key := sha256.Sum256([]byte(path + "\x00" + token))
	now := time.Now()
	a.mu.Lock()
	v, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(v.until) {
		return v.status
	}
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	default:
		return http.StatusServiceUnavailable // not an answer: not cached
	}
	ctx, cancel := context.WithTimeout(ctx, reviewLimit)
	defer cancel()
	status := a.review(ctx, token, path)
	if status == http.StatusServiceUnavailable {
		return status // not an answer: ask again next time
	}
	ttl := denyTTL
	if status == http.StatusOK {
		ttl = allowTTL
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= reviewCache {
		for k, old := range a.cache {
			if !now.Before(old.until) || len(a.cache) >= reviewCache {
				delete(a.cache, k)
			}
		}
	}
	a.cache[key] = verdict{status: status, until: now.Add(ttl)}
	return status
}

func (a *kubeAuth) review(ctx context.Context, token, path string) int {
	user, authenticated, err := a.r.ReviewToken(ctx, token)
	if err != nil {
		a.log.Warn("metrics token review failed", "err", err)
		return http.StatusServiceUnavailable
	}
	if !authenticated {
		return http.StatusUnauthorized
	}
	allowed, err := a.r.Authorize(ctx, user, "get", path)
	if err != nil {
		a.log.Warn("metrics access review failed", "user", user.Username, "err", err)
		return http.StatusServiceUnavailable
	}
	if !allowed {
		return http.StatusForbidden
	}
	return http.StatusOK
}
