package deployments_test

import (
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/pkg/quota"
)

// TestChartRecordingRulesAreTheControllers: the PrometheusRule the chart
// renders with quotaController.recordingRules is the group the controller
// reads (quota.RecordingRules for the release's trust label, interval and
// scrape interval), the controller gets the interval, and a duration the
// chart cannot read, or a custom agentSeries, is one clear error.
func TestChartRecordingRulesAreTheControllers(t *testing.T) {
	base := "quotaController.enabled=true,quotaController.prometheusURL=http://prometheus:9090,quotaController.recordingRules.enabled=true"
	for _, tc := range []struct {
		set, flag        string
		interval, scrape time.Duration
	}{
		{"", "1m", time.Minute, 15 * time.Second},
		{",quotaController.recordingRules.interval=30s,metrics.serviceMonitor.interval=1m", "30s", 30 * time.Second, time.Minute},
		{",quotaController.recordingRules.interval=2m,quotaController.scrapeInterval=10s", "2m", 2 * time.Minute, 10 * time.Second},
	} {
		var rule *unstructured.Unstructured
		var args string
		for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gpu-ops", "--set", base+tc.set)) {
			switch {
			case o.GetKind() == "PrometheusRule" && strings.HasSuffix(o.GetName(), "-recording"):
				rule = o
			case o.GetKind() == "Deployment" && strings.HasSuffix(o.GetName(), "quota-controller"):
				ctrs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
				args = strings.Join(toStrings(ctrs[0].(map[string]any)["args"]), " ")
			}
		}
		if rule == nil {
			t.Fatalf("%s: no recording PrometheusRule rendered", tc.set)
		}
		if !strings.Contains(args, "--recording-rules-interval="+tc.flag) {
			t.Errorf("%s: controller args %q lack the recording interval %s", tc.set, args, tc.interval)
		}
		got, _, _ := unstructured.NestedSlice(rule.Object, "spec", "groups")
		text, err := quota.RecordingRules(quota.Series(`gpuslice_scrape_namespace="gpu-ops"`), tc.interval, tc.scrape)
		if err != nil {
			t.Fatal(err)
		}
		var want []any
		if err := yaml.Unmarshal([]byte(text), &want); err != nil {
			t.Fatal(err)
		}
		// Intervals are durations however written.
		for _, groups := range [][]any{got, want} {
			g := groups[0].(map[string]any)
			d, err := time.ParseDuration(fmt.Sprint(g["interval"]))
			if err != nil {
				t.Fatal(err)
			}
			g["interval"] = d.String()
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: the chart's recording rules\n%v\nare not the controller's\n%v", tc.set, got, want)
		}
	}
	for set, msg := range map[string]string{
		",quotaController.recordingRules.interval=1m30s": `duration "1m30s"`,
		`,quotaController.agentSeries=job="gpuslice"`:    "needs the default agentSeries",
	} {
		out, err := exec.Command(helmBin(t), "template", "gpuslice", chart, "--set", base+set).CombinedOutput()
		if err == nil || !strings.Contains(string(out), msg) {
			t.Errorf("%s: %v\n%s; want an error saying %s", set, err, out, msg)
		}
	}
}
