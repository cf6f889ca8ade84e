package quota

import (
	"regexp"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime"
	dynfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
)

// TestMetricNames keeps MetricNames, which the alert rules are checked
// against, equal to what the controller registers.
func TestMetricNames(t *testing.T) {
	c := New(kubefake.NewClientset(), dynfake.NewSimpleDynamicClient(runtime.NewScheme()), nil, Options{})
	ch := make(chan *prometheus.Desc, 64)
	for _, col := range c.collectors() {
		col.Describe(ch)
	}
	close(ch)
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	var got []string
	for d := range ch {
		got = append(got, fq.FindStringSubmatch(d.String())[1])
	}
	slices.Sort(got)
	want := slices.Clone(MetricNames)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("registered %v\nMetricNames %v", got, want)
	}
}
