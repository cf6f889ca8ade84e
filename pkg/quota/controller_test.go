package quota_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/gpuslice/gpuslice/pkg/quota"
)

// cluster is client-go's fake clientsets holding one namespace with a
// GPUQuota that evicts pods idle for 10 s and one long-running pod holding
// a slice, with every eviction counted.
type cluster struct {
	kube      *kubefake.Clientset
	dyn       *dynfake.FakeDynamicClient
	evictions atomic.Int64
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	started := metav1.NewTime(time.Now().Add(-time.Hour))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "train", Namespace: "ml"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{"nvidia.com/vgpu": resource.MustParse("1")}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &started},
	}
	c := &cluster{kube: kubefake.NewClientset(pod)}
	c.kube.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "eviction" {
			c.evictions.Add(1)
			return true, nil, nil
		}
		return false, nil, nil
	})
	gq := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gpuslice.io/v1alpha1", "kind": "GPUQuota",
		"metadata": map[string]any{"name": "q", "namespace": "ml", "uid": "u1"},
		"spec":     map[string]any{"idle": map[string]any{"belowUtilization": 0.05, "for": "10s", "action": "Evict"}},
	}}
	c.dyn = dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{quota.GVR: "GPUQuotaList"}, gq)
	return c
}

func (c *cluster) condition(t *testing.T, typ string) string {
	t.Helper()
	obj, err := c.dyn.Resource(quota.GVR).Namespace("ml").Get(context.Background(), "q", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, x := range conds {
		if m, _ := x.(map[string]any); m["type"] == typ {
			s, _ := m["status"].(string)
			return s
		}
	}
	return ""
}

// waitCondition waits up to 20 s for the GPUQuota's condition typ to be
// status.
func (c *cluster) waitCondition(t *testing.T, typ, status string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for c.condition(t, typ) != status {
		if time.Now().After(deadline) {
			t.Fatalf("%s never %s", typ, status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestControllerWithHangingPrometheus: each cycle ends at the query
// deadline, says MetricsUnavailable, counts the error, evicts nothing, and
// the controller stays live.
func TestControllerWithHangingPrometheus(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	q := hangingPrometheus(t)
	ctrl := quota.New(c.kube, c.dyn, q, quota.Options{Interval: 300 * time.Millisecond, QueryTimeout: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	c.waitCondition(t, quota.ConditionMetricsUnavailable, "True")
	time.Sleep(time.Second)
	if !ctrl.Healthy(time.Now()) {
		t.Error("a controller whose queries time out reported unhealthy: its cycles complete")
	}
	if n := c.evictions.Load(); n != 0 {
		t.Errorf("%d evictions with Prometheus hanging", n)
	}
}

// stuck is a Querier whose client ignores its context: a call that never
// returns, the way a wedged dependency behaves.
type stuck struct{ release chan struct{} }

func (s stuck) Query(context.Context, string, time.Time, ...promv1.Option) (model.Value, promv1.Warnings, error) {
	<-s.release
	return model.Vector{}, nil, nil
}

// TestControllerWedgedFailsLiveness: when a cycle never completes, the
// liveness check fails after StallCycles intervals, so the kubelet
// restarts the controller.
func TestControllerWedgedFailsLiveness(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	s := stuck{release: make(chan struct{})}
	ctrl := quota.New(c.kube, c.dyn, s, quota.Options{Interval: 200 * time.Millisecond, QueryTimeout: 100 * time.Millisecond})
	if !ctrl.Healthy(time.Now()) {
		t.Error("a standby controller (not running) reported unhealthy")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() { cancel(); close(s.release); <-done })
	deadline := time.Now().Add(20 * time.Second)
	for ctrl.Healthy(time.Now()) {
		if time.Now().After(deadline) {
			t.Fatal("a wedged controller stayed healthy")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
