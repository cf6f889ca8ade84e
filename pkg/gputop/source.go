package gputop

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
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

// Samples implements Source.
func (p *Prometheus) Samples(ctx context.Context, names []string) ([]Sample, error) {
	q := fmt.Sprintf(`{__name__=~"%s"}`, strings.Join(names, "|"))
	v, warnings, err := p.api.Query(ctx, q, time.Now())
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
}

// Samples implements Source. An agent that cannot be read fails the call:
// a partial view would misreport what a node holds.
func (a Agents) Samples(ctx context.Context, names []string) ([]Sample, error) {
	if len(a.Targets) == 0 {
		return nil, errors.New("no agent metrics URLs")
	}
	c := a.Client
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var out []Sample
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
		mfs, err := scrape(ctx, c, u.String())
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w", node, err)
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
	}
	return out, nil
}

func scrape(ctx context.Context, c *http.Client, u string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", u, err)
	}
	return mfs, nil
}
