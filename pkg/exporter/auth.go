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
	"github.com/gpuslice/gpuslice/pkg/netlimit"
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
	// MaxReviewsInFlight bounds the reviews of new tokens asked of the API
	// server at once: a client sending a new token with every request
	// cannot turn the agent into a TokenReview flood; past the bound it
	// gets 503.
	MaxReviewsInFlight = 4
	// MaxRenewalsInFlight is a bound of its own for tokens the API server
	// accepted before and whose answer expired: a flood of made-up tokens
	// never takes the room an authorized scraper needs to be reviewed
	// again.
	MaxRenewalsInFlight = 2
	// ReviewsPerSecond and ReviewBurst bound the reviews of new tokens one
	// source address may cause; past them it gets 429.
	ReviewsPerSecond = 1
	ReviewBurst      = 4
	maxSources       = 4096
)

// KubeAuth guards /metrics as the kubelet and kube-rbac-proxy guard theirs:
// a request needs a bearer token the API server accepts (TokenReview) whose
// user may get the path (SubjectAccessReview, a non-resource URL). No
// token, or a token the API server rejects, is 401; a user without the
// permission is 403; an API server that cannot answer is 503, never an
// open door. /healthz and /readyz stay open for the kubelet's probes.
//
// Answers are cached by a hash of the token: allowed for a minute, denied
// for ten seconds, at most 256 of each, so denials never push out the
// answer an authorized scraper holds. Reviews of new tokens are bounded
// per source address (ReviewsPerSecond, ReviewBurst: 429 past them) and in
// all (MaxReviewsInFlight: 503 past it), each for at most 5 s; tokens
// allowed before are reviewed again within their own bound
// (MaxRenewalsInFlight), which made-up tokens cannot reach.
func KubeAuth(next http.Handler, r Reviewer, log *slog.Logger) http.Handler {
	return &kubeAuth{
		next: next, r: r, log: log, now: time.Now,
		allowed: map[[32]byte]time.Time{}, denied: map[[32]byte]verdict{}, sources: map[string]*bucket{},
		slots: make(chan struct{}, MaxReviewsInFlight), renew: make(chan struct{}, MaxRenewalsInFlight),
	}
}

type verdict struct {
	status int // http.StatusUnauthorized or http.StatusForbidden
	until  time.Time
}

// bucket is one source's allowance of new-token reviews.
type bucket struct {
	tokens float64
	at     time.Time
}

type kubeAuth struct {
	next http.Handler
	r    Reviewer
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	allowed map[[32]byte]time.Time // until when a token is allowed
	denied  map[[32]byte]verdict
	sources map[string]*bucket
	slots   chan struct{} // reviews of new tokens in flight
	renew   chan struct{} // reviews of tokens allowed before, in flight
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
	switch status := a.decide(req.Context(), netlimit.Source(req.RemoteAddr), token, req.URL.Path); status {
	case http.StatusOK:
		a.next.ServeHTTP(w, req)
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="gpuslice"`)
		http.Error(w, "the token was not accepted", status)
	case http.StatusForbidden:
		http.Error(w, "forbidden: the token's user may not get "+req.URL.Path, status)
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many new tokens from this address", status)
	default:
		http.Error(w, "cannot check the token now", status)
	}
}

// decide returns the HTTP status for a token and path from a source
// address, from the cache or the API server.
func (a *kubeAuth) decide(ctx context.Context, src, token, path string) int {
	key := sha256.Sum256([]byte(path + "\x00" + token))
	status, known := a.cached(key, src)
	if status != 0 {
		return status
	}
	pool := a.slots
	if known {
		pool = a.renew
	}
	select {
	case pool <- struct{}{}:
		defer func() { <-pool }()
	default:
		return http.StatusServiceUnavailable // not an answer: not cached
	}
	ctx, cancel := context.WithTimeout(ctx, reviewLimit)
	defer cancel()
	status = a.review(ctx, token, path)
	if status != http.StatusServiceUnavailable { // not an answer: ask again next time
		a.remember(key, status)
	}
	return status
}

// cached returns the cached status of key, or 0 and whether the token was
// allowed before (its review is then a renewal). A new token that its
// source may not have reviewed now is 429.
func (a *kubeAuth) cached(key [32]byte, src string) (status int, known bool) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if until, ok := a.allowed[key]; ok {
		if now.Before(until) {
			return http.StatusOK, true
		}
		return 0, true
	}
	if v, ok := a.denied[key]; ok && now.Before(v.until) {
		return v.status, false
	}
	if !a.takeLocked(src, now) {
		return http.StatusTooManyRequests, false
	}
	return 0, false
}

// takeLocked takes one new-token review from src's allowance.
func (a *kubeAuth) takeLocked(src string, now time.Time) bool {
	b, ok := a.sources[src]
	if !ok {
		if len(a.sources) >= maxSources {
			for s, old := range a.sources { // forget sources whose allowance is whole again
				if old.tokens+now.Sub(old.at).Seconds()*ReviewsPerSecond >= ReviewBurst {
					delete(a.sources, s)
				}
			}
			if len(a.sources) >= maxSources {
				return false
			}
		}
		b = &bucket{tokens: ReviewBurst, at: now}
		a.sources[src] = b
	}
	b.tokens = min(ReviewBurst, b.tokens+now.Sub(b.at).Seconds()*ReviewsPerSecond)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// remember caches an answer of the API server.
func (a *kubeAuth) remember(key [32]byte, status int) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if status == http.StatusOK {
		evict(a.allowed, func(until time.Time) bool { return !now.Before(until) })
		a.allowed[key] = now.Add(allowTTL)
		return
	}
	delete(a.allowed, key) // no longer allowed
	evict(a.denied, func(v verdict) bool { return !now.Before(v.until) })
	a.denied[key] = verdict{status: status, until: now.Add(denyTTL)}
}

// evict makes room for one entry in m: expired entries first, then any.
func evict[V any](m map[[32]byte]V, expired func(V) bool) {
	if len(m) < reviewCache {
		return
	}
	for k, v := range m {
		if expired(v) {
			delete(m, k)
		}
	}
	for k := range m {
		if len(m) < reviewCache {
			return
		}
		delete(m, k)
	}
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
