package health_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/health"
)

func TestProbesFollowTheState(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	st := health.NewState("waiting for the node lock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- health.Serve(ctx, lis, st, slog.New(slog.DiscardHandler)) }()
	get := func(path string) (int, string) {
		c := &http.Client{Timeout: time.Second}
		resp, err := c.Get("http://" + lis.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200 from the start", code)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the node lock") {
		t.Errorf("/readyz = %d %q, want 503 with the reason", code, body)
	}
	var ready atomic.Bool
	st.Set(func() error {
		if !ready.Load() {
			return io.ErrUnexpectedEOF
		}
		return nil
	})
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with a failing check = %d, want 503", code)
	}
	ready.Store(true)
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready = %d, want 200", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve() = %v", err)
	}
}

// Around fails on a taken address before its run starts, and returns
// what its run returns.
func TestAround(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = taken.Close() }()
	ran := false
	run := func(context.Context) error { ran = true; return io.EOF }
	if err := health.Around(context.Background(), taken.Addr().String(), health.NewState("x"), slog.New(slog.DiscardHandler), run); err == nil || ran {
		t.Errorf("a taken address: %v, run started %t; want an error before the run", err, ran)
	}
	if err := health.Around(context.Background(), "127.0.0.1:0", health.NewState("x"), slog.New(slog.DiscardHandler), run); !errors.Is(err, io.EOF) || !ran {
		t.Errorf("Around = %v, ran %t; want the run's error", err, ran)
	}
}
