package quota_test

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/gpuslice/gpuslice/pkg/kueuecheck"
	"github.com/gpuslice/gpuslice/pkg/quota"
)

// TestKueueCheckWaitsThroughAPrometheusOutage is the hanging-Prometheus
// attack's Kueue-mode counterpart: with the budget never measured, the
// AdmissionCheck keeps Workloads pending and says Prometheus is
// unavailable, never admitting on unknown use; before the first cycle it
// says the GPUQuota is not evaluated yet.
func TestKueueCheckWaitsThroughAPrometheusOutage(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	gq, err := c.dyn.Resource(quota.GVR).Namespace("ml").Get(context.Background(), "q", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedMap(gq.Object, map[string]any{"admission": "Kueue", "budget": map[string]any{"gpuHours": 1.0, "window": "1h"}}, "spec")
	if _, err := c.dyn.Resource(quota.GVR).Namespace("ml").Update(context.Background(), gq, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrl := quota.New(c.kube, c.dyn, hangingPrometheus(t), quota.Options{Interval: 300 * time.Millisecond, QueryTimeout: 100 * time.Millisecond, KueueCheck: true})
	if v := kueuecheck.Judge(ctrl.BudgetOf("ml"), kueuecheck.Cost{}); v.State != kueuecheck.StatePending || !strings.Contains(v.Message, "not been evaluated yet") {
		t.Fatalf("before any cycle: %+v", v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	c.waitCondition(t, quota.ConditionMetricsUnavailable, "True")
	// The status is written before the cycle completes: until then the
	// check says "not evaluated yet", pending too. Never ready.
	deadline := time.Now().Add(20 * time.Second)
	for {
		v := kueuecheck.Judge(ctrl.BudgetOf("ml"), kueuecheck.Cost{})
		if v.State != kueuecheck.StatePending {
			t.Fatalf("with Prometheus hanging: %+v; want pending", v)
		}
		if strings.Contains(v.Message, "Prometheus unavailable") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with Prometheus hanging: %q; want it to say Prometheus is unavailable", v.Message)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v := kueuecheck.Judge(ctrl.BudgetOf("no-quota"), kueuecheck.Cost{}); v.State != kueuecheck.StateReady {
		t.Fatalf("a namespace without a GPUQuota: %+v", v)
	}
}
