package quota_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/promtest"
)

const (
	benchNamespaces = 500
	benchPodsPerNS  = 10
)

// BenchmarkEvaluationCycle measures one evaluation cycle of 500 namespaces
// with a GPUQuota each and 5,000 running GPU pods, against a real
// kube-apiserver and a real Prometheus holding 24 hours of the pods'
// history (backfilled with promtool), in steady state (after the first
// cycle created the ResourceQuotas and statuses and evicted the one idle
// pod of each namespace through the Eviction API).
func BenchmarkEvaluationCycle(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a 500-namespace cluster state; run without -short")
	}
	srv := apiserver.Start(b)
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 500, 1000
	dyn := dynamic.NewForConfigOrDie(cfg)
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()

	// The CRD, as shipped.
	apiserver.InstallCRD(b, dyn, "../../deployments/crds/gpuslice.io_gpuquotas.yaml", quota.GVR)

	// 500 namespaces, each with a GPUQuota and 10 running pods of 1 slice.
	start := time.Now()
	started := metav1.NewTime(start.Add(-48 * time.Hour))
	var wg sync.WaitGroup
	errs := make(chan error, benchNamespaces)
	sem := make(chan struct{}, 32)
	for i := range benchNamespaces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ns := fmt.Sprintf("team-%03d", i)
			if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			q := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "gpuslice.io/v1alpha1", "kind": "GPUQuota", "metadata": map[string]any{"name": "team", "namespace": ns},
				"spec": map[string]any{"maxSlices": int64(20), "budget": map[string]any{"gpuHours": 100.0, "window": "24h"},
					"idle": map[string]any{"belowUtilization": 0.05, "for": "30m", "action": "Evict"}},
			}}
			if _, err := dyn.Resource(quota.GVR).Namespace(ns).Create(ctx, q, metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			for j := range benchPodsPerNS {
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", j)}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "main", Image: "example/train",
					Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/vgpu": resource.MustParse("1")}},
				}}}}
				created, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					return
				}
				// Running since well before the idle window, as a kubelet
				// would report it.
				created.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &started}
				if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Logf("created %d namespaces, quotas and %d pods in %v", benchNamespaces, benchNamespaces*benchPodsPerNS, time.Since(start).Round(time.Second))

	// 24 hours of the pods' series, as agents would have exported them:
	// every 10 minutes, then every minute over the last hour (the idle
	// window's resolution). Pod p0 of each namespace was idle throughout;
	// the others used j/10 of a GPU.
	now := time.Now().Truncate(time.Minute)
	var stamps []time.Time
	for t := now.Add(-24 * time.Hour); t.Before(now.Add(-time.Hour)); t = t.Add(10 * time.Minute) {
		stamps = append(stamps, t)
	}
	for t := now.Add(-time.Hour); t.Before(now); t = t.Add(time.Minute) {
		stamps = append(stamps, t)
	}
	var om strings.Builder
	for _, fam := range []string{"util", "busy"} {
		if fam == "util" {
			om.WriteString("# TYPE gpuslice_container_sm_utilization_ratio gauge\n")
		} else {
			om.WriteString("# TYPE gpuslice_container_gpu_busy_seconds counter\n")
		}
		for i := range benchNamespaces {
			for j := range benchPodsPerNS {
				l := fmt.Sprintf(`{namespace="team-%03d",pod="p%d",container="main",gpu="%d",uuid="GPU-%d",instance="node-%d",gpuslice_scrape_namespace="gpuslice-system"}`, i, j, j%8, i%64, i%64)
				for _, ts := range stamps {
					if fam == "util" {
						fmt.Fprintf(&om, "gpuslice_container_sm_utilization_ratio%s %g %d\n", l, float64(j)/10, ts.Unix())
					} else {
						fmt.Fprintf(&om, "gpuslice_container_gpu_busy_seconds_total%s %g %d\n", l, float64(j)/10*ts.Sub(stamps[0]).Seconds(), ts.Unix())
					}
				}
			}
		}
	}
	om.WriteString("# EOF\n")
	t0 := time.Now()
	promURL := promtest.StartBackfilled(b, []byte(om.String()))
	b.Logf("backfilled %d samples (24h of %d pods) in %v", 2*len(stamps)*benchNamespaces*benchPodsPerNS, benchNamespaces*benchPodsPerNS, time.Since(t0).Round(time.Second))
	querier, err := quota.NewQuerier(promURL)
	if err != nil {
		b.Fatal(err)
	}

	ctrl := quota.New(cs, dynamic.NewForConfigOrDie(cfg), querier, quota.Options{ScrapeInterval: time.Minute})
	if err := ctrl.Start(ctx); err != nil {
		b.Fatal(err)
	}
	first := time.Now()
	if _, err := ctrl.Evaluate(ctx, now); err != nil {
		b.Fatal(err)
	}
	b.Logf("first cycle (creates %d ResourceQuotas and statuses, evicts the idle pods): %v", benchNamespaces, time.Since(first).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // the informers see what the first cycle wrote
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if want := benchNamespaces * (benchPodsPerNS - 1); len(pods.Items) != want {
		b.Fatalf("%d pods after the first cycle, want %d: one idle pod of each namespace evicted", len(pods.Items), want)
	}
	// The second cycle records that the evicted pods are gone (500 status
	// writes); steady state begins after it.
	second := time.Now()
	if _, err := ctrl.Evaluate(ctx, now); err != nil {
		b.Fatal(err)
	}
	b.Logf("second cycle (records the evictions in 500 statuses): %v", time.Since(second).Round(time.Millisecond))
	time.Sleep(2 * time.Second)

	var took []time.Duration
	queries := 0
	for b.Loop() {
		t0 := time.Now()
		n, err := ctrl.Evaluate(ctx, now)
		if err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(t0))
		queries = n
	}
	spec := quota.Spec{Budget: &quota.Budget{GPUHours: 100, Window: quota.Duration{Duration: 24 * time.Hour}}, Idle: &quota.Idle{BelowUtilization: 0.05, For: quota.Duration{Duration: 30 * time.Minute}, Action: quota.ActionEvict}}
	t0 = time.Now()
	if _, err := quota.Measure(ctx, querier, []quota.Spec{spec}, now, quota.DefaultQueryTimeout, quota.DefaultSeries, quota.Recording{}); err != nil {
		b.Fatal(err)
	}
	b.Logf("the PromQL queries alone: %v", time.Since(t0).Round(time.Millisecond))
	maxQ, minQ, sumQ, countQ := quota.IdleQueries(spec.Idle.For.Duration, quota.DefaultSeries)
	for _, promql := range []string{quota.BudgetQuery(*spec.Budget, quota.DefaultSeries), maxQ, minQ, sumQ, countQ, quota.BlindQuery(spec.Idle.For.Duration, quota.DefaultSeries), quota.UnknownQuery(spec.Idle.For.Duration, quota.DefaultSeries)} {
		t0 = time.Now()
		if _, _, err := querier.Query(ctx, promql, now); err != nil {
			b.Fatal(err)
		}
		b.Logf("%6v  %s", time.Since(t0).Round(time.Millisecond), promql)
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(took[(len(took)*99)/100].Milliseconds()), "p99-ms")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "max-ms")
	b.ReportMetric(float64(queries), "promql-queries")
}
