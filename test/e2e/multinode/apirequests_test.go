package multinode

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/pkg/kube"
)

// agentRequestRates reads the API server's audit log and says, per node,
// how many requests its agents (user agent kube.UserAgent, from the
// node's address: the chart's agents use the host network) made per
// minute from their first request to the end of the run. Non-watch requests count at completion,
// watches as they start, as BenchmarkAgentAPIRequests counts them. The
// run is not a steady state (pods come and go, the agents are upgraded):
// these are figures under churn, beside the benchmark's steady state.
func agentRequestRates(path string, end time.Time) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	byIP := map[string][]time.Time{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			Stage, Verb, UserAgent   string
			SourceIPs                []string
			RequestReceivedTimestamp time.Time
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		if ev.UserAgent != kube.UserAgent || len(ev.SourceIPs) == 0 ||
			(ev.Verb == "watch") != (ev.Stage == "ResponseStarted") || (ev.Verb != "watch" && ev.Stage != "ResponseComplete") {
			continue
		}
		byIP[ev.SourceIPs[0]] = append(byIP[ev.SourceIPs[0]], ev.RequestReceivedTimestamp)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var out []string
	for _, n := range m.Nodes {
		ts := byIP[n.IP]
		if len(ts) == 0 {
			out = append(out, fmt.Sprintf("%s: no agent requests", n.Name))
			continue
		}
		slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
		span := end.Sub(ts[0]).Minutes()
		out = append(out, fmt.Sprintf("%s: %d requests in %.1f min since its agent's first, %.2f/min", n.Name, len(ts), span, float64(len(ts))/span))
	}
	return out, nil
}

// reportAgentRequests prints agentRequestRates' lines.
func reportAgentRequests() {
	if m.AuditLog == "" {
		return
	}
	lines, err := agentRequestRates(m.AuditLog, time.Now())
	if err != nil {
		fmt.Printf("multinode: agent API requests: %v\n", err)
		return
	}
	fmt.Printf("multinode: agent API requests (audit log; under the scenarios' churn, not a steady state):\n  %s\n", strings.Join(lines, "\n  "))
}
