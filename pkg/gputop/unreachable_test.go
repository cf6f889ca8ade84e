package gputop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/promtest"
)

// fakeAgent serves one GPU and one container, and the time of its last
// sample: now, or lag ago for an agent whose sampler is stuck.
type fakeAgent struct {
	lag time.Duration
}

func (a fakeAgent) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintf(w, `# TYPE gpuslice_slices_capacity gauge
gpuslice_slices_capacity{gpu="0",uuid="GPU-0"} 4
# TYPE gpuslice_slices_allocated gauge
gpuslice_slices_allocated{gpu="0",uuid="GPU-0"} 2
# TYPE gpuslice_container_slices gauge
gpuslice_container_slices{namespace="ml",pod="train",container="main",gpu="0",uuid="GPU-0"} 2
# TYPE gpuslice_agent_last_sample_timestamp_seconds gauge
gpuslice_agent_last_sample_timestamp_seconds %d
`, time.Now().Add(-a.lag).Unix())
}

// TestALostNodeIsNamedNotHidden is node loss as kubectl gpuslice reads
// agents: one agent answers, one never does (its network cut), one's port
// is closed, and one answers with a sample ten minutes old (its sampler
// stuck). The live node is shown; the three others are named unreachable,
// with why, and none of their figures is shown. Reading the agents one
// after the other on one deadline, the hung agent took the others with it;
// failing the call on the first error hid the live node.
func TestALostNodeIsNamedNotHidden(t *testing.T) {
	t.Parallel()
	live := httptest.NewServer(fakeAgent{})
	stuck := httptest.NewServer(fakeAgent{lag: 10 * time.Minute})
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	t.Cleanup(func() { close(release); live.Close(); stuck.Close(); hung.Close() })

	src := Agents{Targets: []string{"node-a=" + live.URL, "node-b=" + hung.URL, "node-c=" + closedURL, "node-d=" + stuck.URL}, Timeout: 500 * time.Millisecond}
	samples, err := src.Samples(context.Background(), Metrics)
	var partial *UnreachableError
	if !errors.As(err, &partial) || len(partial.Nodes) != 2 || partial.Nodes["node-b"] == "" || partial.Nodes["node-c"] == "" {
		t.Fatalf("Samples error = %v; want node-b and node-c unreachable", err)
	}
	m := BuildAt(samples, partial.Nodes, MaxSampleAge)
	var names []string
	for _, u := range m.Unreachable {
		names = append(names, u.Node)
	}
	if strings.Join(names, ",") != "node-b,node-c,node-d" || !strings.Contains(m.Unreachable[2].Reason, "last sample is 10m0s old") {
		t.Errorf("unreachable %+v; want node-b, node-c, and node-d's stuck sampler", m.Unreachable)
	}
	if len(m.GPUs) != 1 || m.GPUs[0].Node != "node-a" || len(m.Containers) != 1 || m.Containers[0].Node != "node-a" {
		t.Errorf("GPUs %+v, containers %+v; want node-a's alone: no figures of a node not read or stale", m.GPUs, m.Containers)
	}
	var out bytes.Buffer
	if err := Nodes(&out, m); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	for _, want := range []string{"node-a  1", "node-b  ?", "unreachable: its agent's last sample is 10m0s old"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("top nodes lacks %q:\n%s", want, out.String())
		}
	}
}

// TestPrometheusNamesALostAgent: through a real Prometheus, an agent that
// stops being scraped leaves no series to show (they go stale at its first
// failed scrape); its node is named unreachable from then on, never just
// absent, with how long ago it last reported as Prometheus tells it; the
// live agent's node is shown.
func TestPrometheusNamesALostAgent(t *testing.T) {
	t.Parallel()
	live := httptest.NewServer(fakeAgent{})
	t.Cleanup(live.Close)
	var stopped atomic.Bool
	lost := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if stopped.Load() {
			http.Error(w, "gone", http.StatusServiceUnavailable)
			return
		}
		fakeAgent{}.ServeHTTP(w, r)
	}))
	t.Cleanup(lost.Close)
	promURL, _ := promtest.Start(t, promtest.StaticTarget("a", strings.TrimPrefix(live.URL, "http://"), "node-a")+
		promtest.StaticTarget("b", strings.TrimPrefix(lost.URL, "http://"), "node-b"))
	p, err := NewPrometheus(promURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	const maxAge = 8 * time.Second
	read := func() Model {
		t.Helper()
		samples, err := p.Samples(context.Background(), Metrics)
		if err != nil {
			t.Fatal(err)
		}
		return BuildAt(samples, nil, maxAge)
	}
	deadline := time.Now().Add(30 * time.Second)
	for m := read(); len(NodesOf(m)) < 2; m = read() {
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus never showed both nodes: %+v", NodesOf(m))
		}
		time.Sleep(200 * time.Millisecond)
	}
	stopped.Store(true)
	for {
		m := read()
		shown := false
		for _, g := range m.GPUs {
			shown = shown || g.Node == "node-b"
		}
		if !shown && len(m.Unreachable) == 0 {
			t.Fatalf("node-b's figures are gone and it is not named: nodes %+v", NodesOf(m))
		}
		if len(m.Unreachable) == 1 && m.Unreachable[0].Node == "node-b" {
			if len(m.GPUs) != 1 || m.GPUs[0].Node != "node-a" {
				t.Errorf("GPUs %+v; want node-a's alone", m.GPUs)
			}
			t.Logf("node-b: %s", m.Unreachable[0].Reason)
			return
		}
		if len(m.Unreachable) > 0 {
			t.Fatalf("unreachable %+v; want node-b alone (node-a is scraped every second)", m.Unreachable)
		}
		if time.Now().After(deadline.Add(maxAge)) {
			t.Fatalf("node-b was never named unreachable: nodes %+v", NodesOf(m))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
