package exporter

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

var update = flag.Bool("update", false, "rewrite docs/metrics.md from the code")

const (
	referenceFile  = "../../docs/metrics.md"
	referenceBegin = "<!-- BEGIN GENERATED: go test ./pkg/exporter -run TestMetricsReference -update -->"
	referenceEnd   = "<!-- END GENERATED -->"
)

// reference renders every metric family the exporter produces as a
// Markdown table.
func reference(t *testing.T) string {
	t.Helper()
	mfs, err := NewExposition(fixed{snapshot()}, info).Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("| metric | type | labels | meaning |\n|---|---|---|---|\n")
	for _, mf := range mfs {
		labels := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		names := make([]string, 0, len(labels))
		for l := range labels {
			names = append(names, "`"+l+"`")
		}
		sort.Strings(names)
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", mf.GetName(), strings.ToLower(dto.MetricType_name[int32(mf.GetType())]), strings.Join(names, ", "), mf.GetHelp())
	}
	return b.String()
}

// TestMetricsReference keeps docs/metrics.md in step with the code.
func TestMetricsReference(t *testing.T) {
	data, err := os.ReadFile(referenceFile)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	i, j := strings.Index(doc, referenceBegin), strings.Index(doc, referenceEnd)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the generated-section markers", referenceFile)
	}
	want := doc[:i+len(referenceBegin)] + "\n" + reference(t) + doc[j:]
	if want == doc {
		return
	}
	if *update {
		if err := os.WriteFile(referenceFile, []byte(want), 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s is stale: run make docs", referenceFile)
}
