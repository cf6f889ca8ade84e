package gputop

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// Prometheus reads samples from a Prometheus server's query API, in one
// query whatever the number of nodes.
type Prometheus struct {
	api promv1.API
}

// NewPrometheus returns a Source over the Prometheus at address. rt, if
// not nil, carries the requests: the API server's, when address is a
// Prometheus Service through its proxy.
func NewPrometheus(address string, rt http.RoundTripper) (*Prometheus, error) {
	c, err := api.NewClient(api.Config{Address: address, RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("prometheus client: %w", err)
	}
	return &Prometheus{api: promv1.NewAPI(c)}, nil
}

// LastSampleLookback is how far back Prometheus is asked for each agent's
// last sample time: an agent gone within it is reported unreachable (its
// other series go stale at once) rather than silently absent.
const LastSampleLookback = time.Hour

// SampleAge names the samples a Source adds, one per node: how old its
// agent's last sample is (seconds), by the clock of the agent's side (the
// agent's or Prometheus'), never the reader's, which may be skewed.
const SampleAge = "gpuslice:agent_sample_age_seconds"

// Samples implements Source. With the agent's last sample time among
// names, each node's SampleAge is Prometheus' time less the last value
// within LastSampleLookback, so that a node whose agent stopped being
// scraped is known, with how long ago it last reported.
func (p *Prometheus) Samples(ctx context.Context, names []string) ([]Sample, error) {
	out, err := p.query(ctx, fmt.Sprintf(`{__name__=~"%s"}`, strings.Join(names, "|")), time.Now())
	if err != nil || !slices.Contains(names, contract.MetricAgentLastSample) {
		return out, err
	}
	// At Prometheus' own time (no time given).
	ages, err := p.query(ctx, fmt.Sprintf(`time() - last_over_time(%s[%s])`, contract.MetricAgentLastSample, model.Duration(LastSampleLookback)), time.Time{})
	for i := range ages {
		ages[i].Name = SampleAge
	}
	return append(out, ages...), err
}

// query runs one instant query.
func (p *Prometheus) query(ctx context.Context, q string, now time.Time) ([]Sample, error) {
	v, warnings, err := p.api.Query(ctx, q, now)
	if err != nil {
		return nil, fmt.Errorf("query prometheus: %w", err)
	}
	_ = warnings
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("query prometheus: unexpected result type %s", v.Type())
	}
	out := make([]Sample, 0, len(vec))
	for _, s := range vec {
		labels := make(map[string]string, len(s.Metric))
		for k, v := range s.Metric {
			labels[string(k)] = string(v)
		}
		name := labels["__name__"]
		delete(labels, "__name__")
		out = append(out, Sample{Name: name, Labels: labels, Value: float64(s.Value)})
	}
	return out, nil
}

// Agents reads samples straight from agents' /metrics endpoints. Each
// target is "node=url" or a bare URL, whose host then names the node.
type Agents struct {
	Targets []string
	Client  *http.Client
	// Timeout bounds each agent's read; zero is AgentTimeout.
	Timeout time.Duration
}

// UnreachableError is a partial read: the samples returned are the other
// nodes'; these nodes' agents could not be read (node: why). BuildAt lists
// them instead of showing nothing, or old figures, for them.
type UnreachableError struct {
	Nodes map[string]string
}

func (e *UnreachableError) Error() string {
	nodes := make([]string, 0, len(e.Nodes))
	for n, why := range e.Nodes {
		nodes = append(nodes, n+": "+why)
	}
	sort.Strings(nodes)
	return "agents not read: " + strings.Join(nodes, "; ")
}

// Samples implements Source. The samples of the agents that answered come
// back with an *UnreachableError naming those that did not: one lost node
// must not hide the others, nor be shown as holding nothing.
func (a Agents) Samples(ctx context.Context, names []string) ([]Sample, error) {
	if len(a.Targets) == 0 {
		return nil, errors.New("no agent metrics URLs")
	}
	c := a.Client
	if c == nil {
		c = &http.Client{}
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	type target struct{ node, url string }
	var ts []target
	for _, t := range a.Targets {
		node, raw, ok := strings.Cut(t, "=")
		if !ok {
			node, raw = "", t
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("agent metrics URL %q: want http://host:port/metrics", raw)
		}
		if node == "" {
			node = u.Hostname()
		}
		ts = append(ts, target{node, u.String()})
	}
	// Each agent on its own deadline, several at once: a node whose
	// network is cut hangs its read, never the others'.
	results := make([][]Sample, len(ts))
	errs := make([]error, len(ts))
	var wg sync.WaitGroup
	slots := make(chan struct{}, MaxConcurrentScrapes)
	for i, t := range ts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			timeout := a.Timeout
			if timeout <= 0 {
				timeout = AgentTimeout
			}
			tctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			results[i], errs[i] = agentSamples(tctx, c, t.node, t.url, want)
		}()
	}
	wg.Wait()
	var out []Sample
	unreachable := map[string]string{}
	for i, t := range ts {
		if errs[i] != nil {
			unreachable[t.node] = errs[i].Error()
			continue
		}
		out = append(out, results[i]...)
	}
	if len(unreachable) > 0 {
		return out, &UnreachableError{Nodes: unreachable}
	}
	return out, nil
}

// AgentTimeout bounds the read of one agent's metrics by default;
// MaxConcurrentScrapes
// how many are read at once.
const (
	AgentTimeout         = 10 * time.Second
	MaxConcurrentScrapes = 16
)

// agentSamples reads one agent's samples of the wanted names, and its
// SampleAge.
func agentSamples(ctx context.Context, c *http.Client, node, u string, want map[string]bool) ([]Sample, error) {
	mfs, date, err := scrape(ctx, c, u)
	if err != nil {
		return nil, err
	}
	var out []Sample
	if age, ok := sampleAge(mfs, date); ok {
		out = append(out, Sample{Name: SampleAge, Labels: map[string]string{"instance": node}, Value: age})
	}
	for name, mf := range mfs {
		if !want[name] {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{"instance": node}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			var v float64
			switch {
			case m.Gauge != nil:
				v = m.GetGauge().GetValue()
			case m.Counter != nil:
				v = m.GetCounter().GetValue()
			case m.Untyped != nil:
				v = m.GetUntyped().GetValue()
			default:
				continue
			}
			out = append(out, Sample{Name: name, Labels: labels, Value: v})
		}
	}
	return out, nil
}

// scrape reads an agent's exposition, and the time its answer carries.
func scrape(ctx context.Context, c *http.Client, u string) (map[string]*dto.MetricFamily, time.Time, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, time.Time{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, time.Time{}, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("parse %s: %w", u, err)
	}
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		date = time.Now() // no Date: the reader's clock, the best there is
	}
	return mfs, date, nil
}

// sampleAge is how old the agent's last sample was when it answered at
// date (its Date header: the agent's clock, as the sample's), in seconds.
func sampleAge(mfs map[string]*dto.MetricFamily, date time.Time) (float64, bool) {
	mf := mfs[contract.MetricAgentLastSample]
	if mf == nil || len(mf.GetMetric()) == 0 {
		return 0, false
	}
	last := mf.GetMetric()[0].GetGauge().GetValue()
	return math.Max(0, float64(date.Unix())-math.Floor(last)), true
}
