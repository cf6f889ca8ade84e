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

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/gpuslice/gpuslice/pkg/netlimit"
)

// Renderer appends the metrics exposition, in the Prometheus text format,
// to a buffer.
type Renderer interface {
	Append(b []byte) []byte
}

// Handler serves /metrics from r, /healthz (the process is up) and
// /readyz (ready reports true: the agent is registered and has sampled).
//
// The exposition is rendered once per key (plain and gzip) and served from
// memory until the key changes: it is rendered from the sampler's snapshot
// and enforcement's published view, so a key made of those two names the
// exposition exactly. A nil key renders every scrape. Renderings are made
// into buffers that no request is serving any more, so a steady scraper
// costs no new memory.
func Handler(r Renderer, key func() any, ready func() bool, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", &metricsHandler{r: r, key: key, log: log, slots: make(chan struct{}, MaxScrapesInFlight)})
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
	r     Renderer
	key   func() any
	log   *slog.Logger
	slots chan struct{}

	mu      sync.Mutex
	current *rendering   // the latest; nil before the first
	spare   []*rendering // renderings no request serves, to render into
	zw      *gzip.Writer
}

// rendering is one exposition, plain and gzipped. refs counts the requests
// serving it, plus one while it is current; at zero its buffers are free.
type rendering struct {
	key       any
	plain, gz []byte
	refs      int
}

func (h *metricsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		http.Error(w, "too many scrapes in flight", http.StatusServiceUnavailable)
		return
	}
	rd := h.acquire()
	defer h.release(rd)
	w.Header().Set("Content-Type", string(textFormat))
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(len(rd.gz)))
		_, _ = w.Write(rd.gz)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(rd.plain)))
	_, _ = w.Write(rd.plain)
}

// acquire returns the rendering for the current key, rendering it only
// when the key changed, and holds it until release.
func (h *metricsHandler) acquire() *rendering {
	var key any
	if h.key != nil {
		key = h.key()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if cur := h.current; cur != nil && h.key != nil && cur.key == key {
		cur.refs++
		return cur
	}
	rd := &rendering{}
	if n := len(h.spare); n > 0 {
		rd, h.spare = h.spare[n-1], h.spare[:n-1]
	}
	rd.key, rd.refs = key, 2 // current, and this request
	rd.plain = h.r.Append(rd.plain[:0])
	gz := bytes.NewBuffer(rd.gz[:0])
	if h.zw == nil {
		h.zw, _ = gzip.NewWriterLevel(gz, gzip.BestSpeed)
	} else {
		h.zw.Reset(gz)
	}
	_, _ = h.zw.Write(rd.plain)
	_ = h.zw.Close() // writes to memory cannot fail
	rd.gz = gz.Bytes()
	if old := h.current; old != nil {
		h.dropLocked(old)
	}
	h.current = rd
	return rd
}

func (h *metricsHandler) release(rd *rendering) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(rd)
}

// dropLocked takes one reference from rd and keeps its buffers for the
// next rendering once none is left, at most MaxScrapesInFlight of them.
func (h *metricsHandler) dropLocked(rd *rendering) {
	rd.refs--
	if rd.refs == 0 && len(h.spare) < MaxScrapesInFlight {
		rd.key = nil
		h.spare = append(h.spare, rd)
	}
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
// memory or its shutdown: scrapes in flight, how long a request may take
// to arrive and its answer to be taken, and how long an idle keep-alive
// connection is kept (shorter than a scrape interval: a scraper opens one
// connection a scrape, an idler loses its place).
const (
	MaxScrapesInFlight = 4
	ReadTimeout        = 10 * time.Second
	WriteTimeout       = 15 * time.Second
	IdleTimeout        = 10 * time.Second
)

// MetricsBounds bounds the metrics server's connections: in all, and from
// one source address, so that one client cannot take the places of the
// others (a connection past a bound is closed at once).
var MetricsBounds = netlimit.Limits{Total: 64, PerSource: 8}

// Serve serves h on lis until ctx ends, with TLS and basic auth when
// webConfigFile names an exporter-toolkit web config.
func Serve(ctx context.Context, lis net.Listener, h http.Handler, webConfigFile string, log *slog.Logger) error {
	lis = netlimit.Listen(lis, MetricsBounds)
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
