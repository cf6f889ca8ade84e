package scale

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// TestSeriesPerAgent counts the series one agent adds to Prometheus on a
// busy node, 8 GPUs and 200 single-slice containers (the node benchmark's
// size), as its real exposition renders them, and what the chart's
// dropDetail leaves: it must drop at least a quarter of them.
func TestSeriesPerAgent(t *testing.T) {
	var ps []Pod
	for i := range 200 {
		ps = append(ps, Pod{Namespace: fmt.Sprintf("team-%d", i%10), Name: fmt.Sprintf("job-%d", i), GPU: i % GPUsPerNode, Slices: 1, Util: 0.5})
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(Exposition(0, ps)))
	if err != nil {
		t.Fatal(err)
	}
	total, detail := 1, 0 // up
	var perContainer []string
	for name, f := range fams {
		n := len(f.GetMetric())
		if h := f.GetMetric(); len(h) > 0 && h[0].GetHistogram() != nil {
			n *= len(h[0].GetHistogram().GetBucket()) + 3 // buckets, +Inf, sum, count
		}
		total += n
		if slices.Contains(contract.DetailMetrics, name) {
			detail += n
		}
		if n >= 200 {
			perContainer = append(perContainer, name)
		}
	}
	slices.Sort(perContainer)
	t.Logf("one agent, 8 GPUs × 200 containers: %d series (%d families have one per container: %s); dropDetail drops %d (%.0f%%), leaving %d",
		total, len(perContainer), strings.Join(perContainer, ", "), detail, 100*float64(detail)/float64(total), total-detail)
	if float64(detail) < 0.25*float64(total) {
		t.Errorf("dropDetail drops %d of %d series: under a quarter", detail, total)
	}
}
