package quota_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// fakeAgent serves an agent's /metrics with the use series the test sets:
// the way a real agent (or a broken one) would present them.
type fakeAgent struct {
	mu      sync.Mutex
	util    map[string]string // pod -> sample text ("0", "-1", "NaN")
	unknown map[string]string // pod -> gpuslice_container_use_unknown
	blind   string            // gpuslice_agent_gpu_blind value
}

func (a *fakeAgent) set(pod, v string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.util[pod] = v
}

func (a *fakeAgent) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var b strings.Builder
	b.WriteString("# TYPE gpuslice_container_sm_utilization_ratio gauge\n")
	for pod, v := range a.util {
		fmt.Fprintf(&b, "gpuslice_container_sm_utilization_ratio{namespace=\"ml\",pod=%q,container=\"main\",gpu=\"0\",uuid=\"GPU-a\"} %s\n", pod, v)
	}
	b.WriteString("# TYPE gpuslice_container_use_unknown gauge\n")
	for pod, v := range a.unknown {
		fmt.Fprintf(&b, "gpuslice_container_use_unknown{namespace=\"ml\",pod=%q,container=\"main\",gpu=\"0\",uuid=\"GPU-a\"} %s\n", pod, v)
	}
	fmt.Fprintf(&b, "# TYPE gpuslice_agent_gpu_blind gauge\ngpuslice_agent_gpu_blind{gpu=\"0\",uuid=\"GPU-a\"} %s\n", a.blind)
	_, _ = io.WriteString(w, b.String())
}

func startAgents(t *testing.T) (nodeA, nodeB *fakeAgent, promURL string) {
	t.Helper()
	// "unplaced" reads a full window of valid zeros (as an agent did for a
	// busy pod whose process it could not place) while the agent marks
	// its use unknown: never idle.
	nodeA = &fakeAgent{util: map[string]string{"idle": "0", "busy": "0.8", "negative": "-1", "nan": "NaN", "inf": "+Inf", "unplaced": "0"},
		unknown: map[string]string{"idle": "0", "unplaced": "1"}, blind: "0"}
	nodeB = &fakeAgent{util: map[string]string{"on-blind-node": "0"}, unknown: map[string]string{}, blind: "0"}
	a, b := httptest.NewServer(nodeA), httptest.NewServer(nodeB)
	t.Cleanup(a.Close)
	t.Cleanup(b.Close)
	promURL, _ = promtest.Start(t, promtest.StaticTarget("a", strings.TrimPrefix(a.URL, "http://"), "node-a")+
		promtest.StaticTarget("b", strings.TrimPrefix(b.URL, "http://"), "node-b"))
	return nodeA, nodeB, promURL
}

// TestIdleEvidenceFromRealPrometheus: what Prometheus really returns for
// missing, late, negative and NaN samples and a blind agent, through the
// controller's queries.
func TestIdleEvidenceFromRealPrometheus(t *testing.T) {
	t.Parallel()
	nodeA, nodeB, promURL := startAgents(t)
	const window = 8 * time.Second
	time.Sleep(window + 2*time.Second)
	nodeA.set("late", "0") // a series that starts now: a Prometheus that lost its history
	nodeB.mu.Lock()
	nodeB.blind = "1" // the agent on node-b cannot read its GPU for a moment
	nodeB.mu.Unlock()
	time.Sleep(2500 * time.Millisecond)
	nodeB.mu.Lock()
	nodeB.blind = "0"
	nodeB.mu.Unlock()
	time.Sleep(1500 * time.Millisecond)

	q, err := quota.NewQuerier(promURL)
	if err != nil {
		t.Fatal(err)
	}
	spec := quota.Spec{Idle: &quota.Idle{BelowUtilization: 0.05, For: quota.Duration{Duration: window}, Action: quota.ActionEvict}}
	u, err := quota.Measure(context.Background(), q, []quota.Spec{spec}, time.Now(), 5*time.Second, quota.DefaultSeries, quota.Recording{})
	if err != nil {
		t.Fatal(err)
	}
	ev := u.Idle[window]
	pods := ev.Pods
	if e := pods["ml/idle"]; !e.Valid || e.Max != 0 || e.Samples < 6 {
		t.Errorf("idle pod: %+v; want valid, max 0, about 8 samples", e)
	}
	if e := pods["ml/busy"]; !e.Valid || e.Max != 0.8 {
		t.Errorf("busy pod: %+v", e)
	}
	for _, p := range []string{"ml/negative", "ml/nan", "ml/inf"} {
		if e := pods[p]; e.Valid || e.Max != 0 {
			t.Errorf("%s: %+v; want invalid, and no number carried", p, e)
		}
	}
	if e := pods["ml/late"]; e.Samples > 5 {
		t.Errorf("late series: %+v; want few samples", e)
	}
	if !ev.Blind["node-b"] || ev.Blind["node-a"] {
		t.Errorf("blind agents %v; want node-b only", ev.Blind)
	}
	if !ev.Unknown["ml/unplaced"] || len(ev.Unknown) != 1 {
		t.Errorf("pods whose use was unknown %v; want ml/unplaced only", ev.Unknown)
	}
	// The decision from this evidence: only the covered, valid idle pod.
	old := time.Now().Add(-time.Hour)
	in := quota.Input{Spec: spec, MetricsOK: true, Now: time.Now(), ScrapeInterval: time.Second}
	for _, name := range []string{"idle", "busy", "negative", "nan", "inf", "late", "on-blind-node", "missing", "unplaced"} {
		p := quota.Pod{Name: name, Slices: 1, Running: true, Started: old, UseUnknown: ev.Unknown["ml/"+name]}
		if e, ok := pods["ml/"+name]; ok {
			p.Evidence = &e
			for _, inst := range e.Instances {
				p.AgentBlind = p.AgentBlind || ev.Blind[inst]
			}
		}
		in.Pods = append(in.Pods, p)
	}
	d := quota.Decide(in)
	if strings.Join(d.Evict, ",") != "idle" {
		t.Errorf("evict %v; want only the idle pod (unknown: %v)", d.Evict, d.Unknown)
	}
	if len(d.Unknown) != 7 {
		t.Errorf("unknown %v; want negative, nan, inf, late, on-blind-node, missing and unplaced", d.Unknown)
	}
}

// TestPartialResponseDecidesNothing: a Prometheus-compatible store that
// answers with warnings (Thanos or Mimir missing a store) fails the
// measurement instead of lending its partial numbers to a decision.
func TestPartialResponseDecidesNothing(t *testing.T) {
	t.Parallel()
	_, _, promURL := startAgents(t)
	target, err := url.Parse(promURL)
	if err != nil {
		t.Fatal(err)
	}
	// A proxy that adds a warning to the real answer, as Thanos does.
	partial := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, target.String()+r.URL.RequestURI(), r.Body)
		req.Header = r.Header.Clone()
		req.Header.Del("Accept-Encoding") // let the transport decompress
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		body = bytes.Replace(body, []byte(`"status":"success"`), []byte(`"status":"success","warnings":["store gateway unreachable: partial response"]`), 1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(partial.Close)
	time.Sleep(3 * time.Second)
	q, err := quota.NewQuerier(partial.URL)
	if err != nil {
		t.Fatal(err)
	}
	spec := quota.Spec{Idle: &quota.Idle{BelowUtilization: 0.05, For: quota.Duration{Duration: 2 * time.Second}, Action: quota.ActionEvict}}
	if _, err := quota.Measure(context.Background(), q, []quota.Spec{spec}, time.Now(), 5*time.Second, quota.DefaultSeries, quota.Recording{}); !errors.Is(err, quota.ErrPartialResponse) {
		t.Errorf("Measure() = %v; want a partial response error", err)
	}
}

// hangingPrometheus is a Querier over a server that accepts every query
// and never answers.
func hangingPrometheus(t *testing.T) quota.Querier {
	t.Helper()
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); hang.Close() })
	q, err := quota.NewQuerier(hang.URL)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// TestHangingPrometheusTimesOut: a Prometheus that accepts and never
// answers ends the measurement within the query timeout.
func TestHangingPrometheusTimesOut(t *testing.T) {
	t.Parallel()
	q := hangingPrometheus(t)
	spec := quota.Spec{Budget: &quota.Budget{GPUHours: 1, Window: quota.Duration{Duration: time.Hour}}}
	done := make(chan error, 1)
	go func() {
		_, err := quota.Measure(context.Background(), q, []quota.Spec{spec}, time.Now(), 300*time.Millisecond, quota.DefaultSeries, quota.Recording{})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Measure() = %v; want the deadline exceeded", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Measure never returned from a hanging Prometheus")
	}
}

// TestThanosIsAskedForWholeAnswers: every query asks not to be answered
// partially (Thanos' partial_response=false), so a query engine that
// cannot reach a store fails the query rather than answering a smaller
// sum; a fake Thanos answers partially only when not asked so.
func TestThanosIsAskedForWholeAnswers(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	asked := map[string]int{}
	thanos := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked[r.FormValue("partial_response")]++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.FormValue("partial_response") == "false" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"status":"error","errorType":"unavailable","error":"receive series from store gateway: unreachable"}`)
			return
		}
		_, _ = io.WriteString(w, `{"status":"success","warnings":["store gateway unreachable"],"data":{"resultType":"vector","result":[]}}`)
	}))
	t.Cleanup(thanos.Close)
	q, err := quota.NewQuerier(thanos.URL)
	if err != nil {
		t.Fatal(err)
	}
	spec := quota.Spec{Budget: &quota.Budget{GPUHours: 1, Window: quota.Duration{Duration: time.Hour}},
		Idle: &quota.Idle{BelowUtilization: 0.05, For: quota.Duration{Duration: time.Minute}, Action: quota.ActionEvict}}
	_, err = quota.Measure(context.Background(), q, []quota.Spec{spec}, time.Now(), 5*time.Second, quota.DefaultSeries, quota.Recording{})
	if err == nil || errors.Is(err, quota.ErrPartialResponse) {
		t.Errorf("Measure() = %v; want the store's failure, not a partial answer", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if asked["false"] == 0 || len(asked) != 1 {
		t.Errorf("partial_response values asked %v; want false on every query", asked)
	}
}
