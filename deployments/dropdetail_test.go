package deployments_test

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/quota"
)

// TestChartDropsOnlyDetail: metrics.serviceMonitor.dropDetail drops
// exactly contract.DetailMetrics at the scrape, and none of them is read by
// kubectl gpuslice or the quota controller (contract.ReadMetrics), the
// shipped alerts, the Grafana dashboard or the recording rules: dropping
// them blinds nothing that ships.
func TestChartDropsOnlyDetail(t *testing.T) {
	var regex string
	for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--set", "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.dropDetail=true")) {
		if o.GetKind() != "ServiceMonitor" {
			continue
		}
		eps, _, _ := unstructured.NestedSlice(o.Object, "spec", "endpoints")
		mrs, _, _ := unstructured.NestedSlice(eps[0].(map[string]any), "metricRelabelings")
		for _, mr := range mrs {
			if m := mr.(map[string]any); m["action"] == "drop" {
				regex = m["regex"].(string)
			}
		}
	}
	if want := strings.Join(contract.DetailMetrics, "|"); regex != want {
		t.Fatalf("the chart drops %q; want contract.DetailMetrics, %q", regex, want)
	}
	drop := regexp.MustCompile("^(?:" + regex + ")$")
	rules, err := quota.RecordingRules(quota.DefaultSeries, time.Minute, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	read := strings.Join(contract.ReadMetrics, " ") + " " + rules
	for _, f := range []string{"monitoring/prometheusrule.yaml", "monitoring/grafana-dashboard.json", "helm/gpuslice/files/alert-groups.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		read += " " + string(data)
	}
	used := regexp.MustCompile(`gpuslice_[a-z_]+`).FindAllString(read, -1)
	slices.Sort(used)
	for _, name := range slices.Compact(used) {
		if drop.MatchString(name) {
			t.Errorf("dropDetail drops %s, which a shipped reader uses", name)
		}
	}
	// Off by default: nothing dropped.
	for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--set", "metrics.serviceMonitor.enabled=true")) {
		if o.GetKind() == "ServiceMonitor" && strings.Contains(fmt.Sprint(o.Object["spec"]), "action:drop") {
			t.Error("the ServiceMonitor drops series by default")
		}
	}
}
