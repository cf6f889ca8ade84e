package exporter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// Handler serves /metrics from reg, /healthz (the process is up) and
// /readyz (ready reports true: the agent is registered and has sampled).
func Handler(reg *prometheus.Registry, ready func() bool, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
		Timeout:       10 * time.Second,
		// Each scrape in flight holds a rendered body; past the bound,
		// scrapers get 503 rather than the agent running out of memory.
		MaxRequestsInFlight: MaxScrapesInFlight,
	}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: not registered with a live kubelet or not sampled yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// ValidateWebConfig checks an exporter-toolkit web config file (TLS and
// basic auth); the empty path means plain HTTP.
func ValidateWebConfig(path string) error {
	if path == "" {
		return nil
	}
	if err := web.Validate(path); err != nil {
		return fmt.Errorf("web config %s: %w", path, err)
	}
	return nil
}

// Bounds on the metrics server, so that no client can hold the agent's
// memory or its shutdown: scrapes in flight, connections, and how long a
// request may take to arrive and its answer to be taken.
const (
	MaxScrapesInFlight = 4
	MaxConnections     = 64
	ReadTimeout        = 10 * time.Second
	WriteTimeout       = 15 * time.Second
	IdleTimeout        = 60 * time.Second
)

// Serve serves h on lis until ctx ends, with TLS and basic auth when
// webConfigFile names an exporter-toolkit web config.
func Serve(ctx context.Context, lis net.Listener, h http.Handler, webConfigFile string, log *slog.Logger) error {
	lis = netutil.LimitListener(lis, MaxConnections)
	srv := &http.Server{
		Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: ReadTimeout,
		WriteTimeout: WriteTimeout, IdleTimeout: IdleTimeout, MaxHeaderBytes: 16 << 10,
	}
	errc := make(chan error, 1)
	go func() {
		errc <- web.Serve(lis, srv, &web.FlagConfig{WebConfigFile: &webConfigFile}, log)
	}()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("metrics server: %w", err)
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil {
			return srv.Close() // a client that will not let go
		}
		return nil
	}
}
