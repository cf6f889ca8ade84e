// Package monitoring_test checks the monitoring objects shipped in
// deployments/monitoring against promtool and against the metrics the
// agent really exports.
package monitoring_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/pkg/quota"
)

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("GPUSLICE_REQUIRE_PROMTOOL") != "" {
			t.Fatal("promtool is required (GPUSLICE_REQUIRE_PROMTOOL is set) but not on PATH")
		}
		t.Skip("promtool not installed (apt-get install prometheus)")
	}
	return p
}

func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
}

// exported returns the metric names in the code-generated metrics
// reference, which a test in pkg/exporter keeps in step with the code.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(gpuslice_[a-z_]+)` \\| (\\w+)").FindAllStringSubmatch(string(data), -1) {
		out[m[1]] = true
		if m[2] == "histogram" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				out[m[1]+s] = true
			}
		}
	}
	if len(out) < 20 {
		t.Fatalf("found only %d metrics in docs/metrics.md", len(out))
	}
	return out
}

var metricName = regexp.MustCompile(`gpuslice_[a-z_]+`)

func checkNames(t *testing.T, what, expr string, known map[string]bool) {
	t.Helper()
	for _, n := range metricName.FindAllString(expr, -1) {
		if !known[n] {
			t.Errorf("%s uses %s, which the agent does not export", what, n)
		}
	}
}

func TestAlertRules(t *testing.T) {
	pt := promtool(t)
	var rule struct {
		Kind string         `json:"kind"`
		Spec map[string]any `json:"spec"`
	}
	data, err := os.ReadFile("prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rule); err != nil {
		t.Fatal(err)
	}
	if rule.Kind != "PrometheusRule" {
		t.Fatalf("kind = %q", rule.Kind)
	}
	dir := t.TempDir()
	rules, err := yaml.Marshal(rule.Spec)
	if err != nil {
		t.Fatal(err)
	}
	known := exported(t)
	for _, n := range quota.MetricNames {
		known[n] = true
	}
	for _, m := range regexp.MustCompile(`expr: (.*(?:\n\s+[^:\n]+)*)`).FindAllString(string(data), -1) {
		checkNames(t, "alert rule", m, known)
	}
	tests, err := os.ReadFile("testdata/alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{"rules.yaml": rules, "alerts_test.yaml": tests} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run(t, dir, pt, "check", "rules", "rules.yaml")
	run(t, dir, pt, "test", "rules", "alerts_test.yaml")
}

func TestDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	vars := map[string]bool{}
	var exprs []string
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
		if q, ok := v.Query.(string); ok && strings.HasPrefix(q, "label_values(") {
			// label_values(<selector>, <label>): the selector must parse.
			inner := strings.TrimSuffix(strings.TrimPrefix(q, "label_values("), ")")
			exprs = append(exprs, inner[:strings.LastIndex(inner, ",")])
		}
	}
	for _, v := range []string{"datasource", "instance", "namespace", "pod"} {
		if !vars[v] {
			t.Errorf("dashboard lacks the $%s variable", v)
		}
	}
	titles := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			titles[p.Title] = true
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, r := range []string{"Cluster", "Node", "GPU", "Namespace", "Pod", "Slices"} {
		if !titles[r] {
			t.Errorf("dashboard lacks the %s view", r)
		}
	}
	known := exported(t)
	for _, n := range quota.MetricNames {
		known[n] = true
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	sub := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*", "$namespace", ".*", "$pod", ".*")
	for i, e := range exprs {
		checkNames(t, "dashboard query", e, known)
		q, _ := json.Marshal(sub.Replace(e))
		fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	pt := promtool(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.yaml"), []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, dir, pt, "check", "rules", "dashboard.yaml")
}

func TestServiceMonitor(t *testing.T) {
	data, err := os.ReadFile("servicemonitor.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(data), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("want a Service and a ServiceMonitor, got %d documents", len(docs))
	}
	var svc struct {
		Kind string `json:"kind"`
		Spec struct {
			Selector map[string]string `json:"selector"`
			Ports    []struct {
				Name string `json:"name"`
				Port int    `json:"port"`
			} `json:"ports"`
		} `json:"spec"`
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	var sm struct {
		Kind string `json:"kind"`
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			Endpoints []struct {
				Port        string `json:"port"`
				Path        string `json:"path"`
				HonorLabels bool   `json:"honorLabels"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(docs[0]), &svc); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(docs[1]), &sm); err != nil {
		t.Fatal(err)
	}
	if svc.Kind != "Service" || sm.Kind != "ServiceMonitor" {
		t.Fatalf("kinds = %s, %s", svc.Kind, sm.Kind)
	}
	for k, v := range sm.Spec.Selector.MatchLabels {
		if svc.Metadata.Labels[k] != v {
			t.Errorf("ServiceMonitor selects %s=%s, which the Service does not carry", k, v)
		}
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 9445 || len(sm.Spec.Endpoints) != 1 ||
		sm.Spec.Endpoints[0].Port != svc.Spec.Ports[0].Name || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("Service ports %+v and ServiceMonitor endpoints %+v do not meet on the agent's :9445/metrics", svc.Spec.Ports, sm.Spec.Endpoints)
	}
	if len(sm.Spec.Endpoints) == 1 && !sm.Spec.Endpoints[0].HonorLabels {
		t.Error("the ServiceMonitor does not honor the agent's labels: the operator's namespace/pod/container would overwrite the tenant's")
	}
}
