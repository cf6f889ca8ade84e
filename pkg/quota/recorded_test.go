package quota

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/runtime"
	dynfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
)

// TestRecordedBudgetsSaidOnceNotEveryCycle: which source each budget was
// read from is a metric every cycle, and the warning that the rules do not
// cover a window comes when that starts, not every cycle of the week a
// new 1w window takes to be covered; an outage (nothing known) changes
// neither.
func TestRecordedBudgetsSaidOnceNotEveryCycle(t *testing.T) {
	var logs bytes.Buffer
	c := New(kubefake.NewClientset(), dynfake.NewSimpleDynamicClient(runtime.NewScheme()), nil, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	uncovered := Usage{Recorded: map[string]bool{"Busy/1w": false}, RecordingGaps: map[string]string{"Busy/1w": "ran 3 times"}}
	covered := Usage{Recorded: map[string]bool{"Busy/1w": true}}
	for _, step := range []struct {
		u        Usage
		metric   float64
		warnings int
	}{{uncovered, 0, 1}, {uncovered, 0, 1}, {Usage{}, 0, 1}, {covered, 1, 1}, {uncovered, 0, 2}} {
		c.recordedBudgets(step.u)
		if got := testutil.ToFloat64(c.metrics.recorded.WithLabelValues("Busy/1w")); got != step.metric {
			t.Errorf("gpuslice_quota_budget_recorded = %v, want %v", got, step.metric)
		}
		if got := strings.Count(logs.String(), "recording rules do not cover"); got != step.warnings {
			t.Errorf("%d warnings, want %d:\n%s", got, step.warnings, logs.String())
		}
	}
}
