package exporter

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/exporter-toolkit/web"
)

// Handler serves /metrics from reg, /healthz (the process is up) and
// /readyz (ready reports true: the agent is registered and has sampled).
//
// The exposition is rendered once per key (plain and gzip) and served from
// memory until the key changes: every collector reads the sampler's
// snapshot and enforcement's published view, so a key made of those two
// names the exposition exactly. A nil key renders every scrape.
func Handler(reg prometheus.Gatherer, key func() any, ready func() bool, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", &metricsHandler{reg: reg, key: key, log: log, slots: make(chan struct{}, MaxScrapesInFlight)})
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

// textFormat is the exposition format served: Prometheus text 0.0.4.
var textFormat = expfmt.NewFormat(expfmt.TypeTextPlain)

// metricsHandler serves the rendered exposition, at most
// MaxScrapesInFlight at a time: past the bound, scrapers get 503 rather
// than each holding the agent's memory.
type metricsHandler struct {
	reg   prometheus.Gatherer
	key   func() any
	log   *slog.Logger
	slots chan struct{}

	mu        sync.Mutex
	rendered  bool
	renderKey any
	plain, gz []byte
}

func (h *metricsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		http.Error(w, "too many scrapes in flight", http.StatusServiceUnavailable)
		return
	}
	plain, gz, err := h.render()
	if err != nil {
		http.Error(w, "metrics could not be gathered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", string(textFormat))
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(len(gz)))
		_, _ = w.Write(gz)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(plain)))
	_, _ = w.Write(plain)
}

// render returns the exposition for the current key, rendering it only
// when the key changed. The bytes returned are never written again.
func (h *metricsHandler) render() (plain, gz []byte, err error) {
	var key any
	if h.key != nil {
		key = h.key()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.key != nil && h.rendered && h.renderKey == key {
		return h.plain, h.gz, nil
	}
	mfs, err := h.reg.Gather()
	if err != nil {
		// As promhttp's ContinueOnError: serve what was gathered.
		h.log.Error("gather metrics", "err", err)
		if len(mfs) == 0 {
			return nil, nil, err
		}
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, textFormat)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, nil, fmt.Errorf("encode %s: %w", mf.GetName(), err)
		}
	}
	var zbuf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zbuf, gzip.BestSpeed)
	_, _ = zw.Write(buf.Bytes())
	if err := zw.Close(); err != nil {
		return nil, nil, err
	}
	h.plain, h.gz, h.renderKey, h.rendered = buf.Bytes(), zbuf.Bytes(), key, true
	return h.plain, h.gz, nil
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
