package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/gpuslice/gpuslice/pkg/netlimit"
)

// State is what /readyz reports: not ready with a reason until a
// readiness check is set, then that check's answer. It is safe for
// concurrent use.
type State struct {
	check atomic.Pointer[func() error]
}

// NewState returns a State that is not ready, for the reason given.
func NewState(why string) *State {
	s := &State{}
	s.NotReady(why)
	return s
}

// NotReady makes /readyz answer 503 with why.
func (s *State) NotReady(why string) {
	err := errors.New(why)
	s.Set(func() error { return err })
}

// Set makes /readyz answer from ready: 200 when it returns nil, 503 with
// its error otherwise.
func (s *State) Set(ready func() error) { s.check.Store(&ready) }

// Ready is nil when the binary is ready, or why it is not.
func (s *State) Ready() error { return (*s.check.Load())() }

// Handler serves /healthz (the process serves HTTP: 200) and /readyz
// (State's answer).
func Handler(s *State) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Bounds on the health listener. The kubelet probes from its node's
// address with a one-second timeout and opens few connections; a
// client past its share of connections is refused at once, and one that
// holds a connection without speaking loses it within seconds.
var Bounds = netlimit.Limits{Total: 1024, PerSource: 4}

// Timeouts of the health server: a probe is a few hundred bytes.
const (
	ReadTimeout = 2 * time.Second
	IdleTimeout = 5 * time.Second
)

// Around runs run in an errgroup beside the probes on addr (none when
// addr is empty), which are served from before run starts: a binary
// waiting on its node lock or its API server is alive meanwhile. A taken
// address fails at once, before run starts. It returns when both end: ctx
// ending, or run or the server failing.
func Around(ctx context.Context, addr string, s *State, log *slog.Logger, run func(ctx context.Context) error) error {
	g, ctx := errgroup.WithContext(ctx)
	if addr != "" {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen on --health-address: %w", err)
		}
		g.Go(func() error { return Serve(ctx, lis, s, log) })
	}
	g.Go(func() error { return run(ctx) })
	return g.Wait()
}

// Serve serves s on lis until ctx ends.
func Serve(ctx context.Context, lis net.Listener, s *State, log *slog.Logger) error {
	srv := &http.Server{
		Handler: Handler(s), ReadHeaderTimeout: ReadTimeout, ReadTimeout: ReadTimeout,
		WriteTimeout: ReadTimeout, IdleTimeout: IdleTimeout, MaxHeaderBytes: 4 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(netlimit.Listen(lis, Bounds)) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("health server: %w", err)
	case <-ctx.Done():
		return srv.Close() // probes need no graceful end
	}
}
