package quota_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// TestControllerKeepsAPodWhoseUseIsUnknown runs the controller against a
// real Prometheus scraping an agent that reports two pods at a full window
// of valid zeros, one of them marked use unknown (a busy process of it the
// agent could not place in one of its containers, as the agent reports in
// cmd/gpu-agent's TestUnknownIsNeverFree): the idle one is evicted, the
// one whose use is unknown is kept.
func TestControllerKeepsAPodWhoseUseIsUnknown(t *testing.T) {
	t.Parallel()
	agent := &fakeAgent{util: map[string]string{"idle": "0", "unplaced": "0"}, unknown: map[string]string{"idle": "0", "unplaced": "1"}, blind: "0"}
	srv := httptest.NewServer(agent)
	t.Cleanup(srv.Close)
	promURL, _ := promtest.Start(t, promtest.StaticTarget("a", strings.TrimPrefix(srv.URL, "http://"), "node-a"))

	started := metav1.NewTime(time.Now().Add(-time.Hour))
	gpuPod := func(name string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ml"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Resources: corev1.ResourceRequirements{
				Limits: corev1.ResourceList{"nvidia.com/vgpu": resource.MustParse("1")}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &started},
		}
	}
	kube := kubefake.NewClientset(gpuPod("idle"), gpuPod("unplaced"))
	var mu sync.Mutex
	evicted := map[string]bool{}
	kube.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		if ev, ok := a.(k8stesting.CreateAction).GetObject().(*policyv1.Eviction); ok {
			mu.Lock()
			evicted[ev.Name] = true
			mu.Unlock()
		}
		return true, nil, nil
	})
	gq := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gpuslice.io/v1alpha1", "kind": "GPUQuota",
		"metadata": map[string]any{"name": "q", "namespace": "ml", "uid": "u1"},
		"spec":     map[string]any{"idle": map[string]any{"belowUtilization": 0.05, "for": "10s", "action": "Evict"}},
	}}
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{quota.GVR: "GPUQuotaList"}, gq)
	q, err := quota.NewQuerier(promURL)
	if err != nil {
		t.Fatal(err)
	}
	ctrl := quota.New(kube, dyn, q, quota.Options{Interval: 500 * time.Millisecond, QueryTimeout: 2 * time.Second, ScrapeInterval: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	deadline := time.Now().Add(40 * time.Second)
	for {
		mu.Lock()
		idle := evicted["idle"]
		mu.Unlock()
		if idle {
			break
		}
		if time.Now().After(deadline) {
			obj, _ := dyn.Resource(quota.GVR).Namespace("ml").Get(context.Background(), "q", metav1.GetOptions{})
			t.Fatalf("the idle pod was never evicted: the controller decided nothing, and so proves nothing of the other; status %v", obj.Object["status"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // cycles after the window was covered
	mu.Lock()
	defer mu.Unlock()
	if evicted["unplaced"] {
		t.Error("a pod whose use the agent marked unknown was evicted as idle")
	}
}
