package scale

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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

// The GPUQuota of every namespace: a 24-hour busy budget none spends and
// a 30-minute idle window no pod is idle over: the steady state.
var (
	budget = quota.Budget{GPUHours: 10000, Window: quota.Duration{Duration: 24 * time.Hour}}
	idle   = quota.Idle{BelowUtilization: 0.05, For: quota.Duration{Duration: 30 * time.Minute}, Action: quota.ActionEvict}
)

const (
	// maxMeasure bounds one mode's cycles: past it, after at least 5,
	// the benchmark stops short of GPUSLICE_SCALE_CYCLES and reports how
	// many it ran.
	maxMeasure = 4 * time.Minute
	scrape     = 30 * time.Second // the agents' scrape interval in the history
	recording  = time.Minute      // the recording rules' interval
)

// env is what the sizes share.
type env struct {
	cs         kubernetes.Interface
	dyn        dynamic.Interface
	kubeconfig string
	at         time.Time // the history's present: in-process cycles evaluate here
	cycles     int
	controller string // the gpu-quota-controller binary; "" skips its RSS
}

// BenchmarkClusterScale measures the quota controller at N nodes (8 GPUs,
// 24 pods each, two nodes' pods per namespace) against a real
// kube-apiserver holding the pods and a real Prometheus holding 24 h of the
// agents' series (test/scale/blocks writes them as TSDB blocks from each
// node's real exposition), with the agents' series alone (rules=off) and
// with the chart's recording rules backfilled by Prometheus' own promtool
// from the same history (rules=on). Per size and mode: the cycle's p50,
// p99 and max over GPUSLICE_SCALE_CYCLES (100) in-process cycles (fewer,
// at least 5, when they take over 4 minutes), its
// queries and the samples Prometheus read for them, and the real binary's
// RSS high-water mark over 2 cycles. The GPU-hours each mode measures are
// checked against the history's own truth (each pod's utilization × 24 h):
// a mode that misreads them fails the benchmark.
//
// make bench-scale runs it: GPUSLICE_BLOCKS (the blocks binary) and
// GPUSLICE_QUOTA_CONTROLLER set, -benchtime 1x; GPUSLICE_SCALE_NODES
// picks the sizes (100,300,1000). With -short (make bench-smoke, in CI) it
// builds the blocks binary itself and runs 2 and 3 nodes, 2 cycles each,
// without the binary's RSS: that it works, truth checks included.
func BenchmarkClusterScale(b *testing.B) {
	defSizes, defCycles := []int{100, 300, 1000}, []int{100}
	blocks := os.Getenv("GPUSLICE_BLOCKS")
	if testing.Short() { // make bench-smoke: two tiny sizes, that it works
		defSizes, defCycles = []int{2, 3}, []int{2}
		if blocks == "" {
			blocks = buildBlocks(b)
		}
	}
	if blocks == "" {
		b.Fatal("GPUSLICE_BLOCKS is not set: make bench-scale builds test/scale/blocks and runs this")
	}
	sizes, err := ints(os.Getenv("GPUSLICE_SCALE_NODES"), defSizes)
	if err != nil {
		b.Fatal(err)
	}
	cycles, err := ints(os.Getenv("GPUSLICE_SCALE_CYCLES"), defCycles)
	if err != nil {
		b.Fatal(err)
	}
	srv := apiserver.Start(b)
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	e := &env{cs: kubernetes.NewForConfigOrDie(cfg), dyn: dynamic.NewForConfigOrDie(cfg), kubeconfig: srv.Kubeconfig,
		at: time.Now().Truncate(time.Minute), cycles: cycles[0], controller: os.Getenv("GPUSLICE_QUOTA_CONTROLLER")}
	apiserver.InstallCRD(b, e.dyn, "../../deployments/crds/gpuslice.io_gpuquotas.yaml", quota.GVR)
	// History from 24 h before the present (and a rate range more) to 90
	// minutes after it, for the real binary, which evaluates at its own now.
	from, to := e.at.Add(-24*time.Hour-10*time.Minute), e.at.Add(90*time.Minute)
	built := 0
	for _, n := range sizes {
		t0 := time.Now()
		grow(b, e, built, n)
		built = n
		b.Logf("nodes=%d cluster: %d namespaces, %d pods in the API server (%v)", n, (n+NodesPerNamespace-1)/NodesPerNamespace, n*PodsPerNode, time.Since(t0).Round(time.Second))
		data := filepath.Join(b.TempDir(), "data")
		t0 = time.Now()
		series, samples := history(b, blocks, data, n, from, to)
		b.Logf("nodes=%d history: %d series, %d samples written as blocks (%v)", n, series, samples, time.Since(t0).Round(time.Second))
		promURL, stop := promtest.StartData(b, data)
		if os.Getenv("GPUSLICE_SCALE_RULES") != "on" { // "on": only with the rules, for profiling
			b.Run(fmt.Sprintf("nodes=%d/rules=off", n), func(b *testing.B) { measure(b, e, promURL, n, quota.Recording{}) })
		}
		t0 = time.Now()
		backfillRules(b, promURL, data, from, to)
		stop()
		b.Logf("nodes=%d rules: recording rules backfilled by promtool (%v)", n, time.Since(t0).Round(time.Second))
		promURL, stop = promtest.StartData(b, data)
		b.Run(fmt.Sprintf("nodes=%d/rules=on", n), func(b *testing.B) { measure(b, e, promURL, n, quota.Recording{Interval: recording}) })
		stop()
		if err := os.RemoveAll(data); err != nil {
			b.Fatal(err)
		}
	}
}

// measure runs the cycles of one size and mode and reports them.
func measure(b *testing.B, e *env, promURL string, n int, rec quota.Recording) {
	q, err := quota.NewQuerier(promURL)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	truth(ctx, b, q, e.at, n, rec)
	ctrl := quota.New(e.cs, e.dyn, q, quota.Options{ScrapeInterval: scrape, QueryTimeout: 10 * time.Minute, Recording: rec})
	if err := ctrl.Start(ctx); err != nil {
		b.Fatal(err)
	}
	for range 2 { // the first writes every status; steady state after
		if _, err := ctrl.Evaluate(ctx, e.at); err != nil {
			b.Fatal(err)
		}
	}
	var took []time.Duration
	queries := 0
	for b.Loop() {
		begin := time.Now()
		for i := range e.cycles {
			if i >= 5 && time.Since(begin) > maxMeasure {
				break // a slow mode: fewer cycles, said in the report
			}
			t0 := time.Now()
			nq, err := ctrl.Evaluate(ctx, e.at)
			if err != nil {
				b.Fatal(err)
			}
			took = append(took, time.Since(t0))
			queries = nq
		}
	}
	slices.Sort(took)
	budgetSamples, idleSamples, peak := cycleSamples(b, promURL, e.at, rec)
	b.ReportMetric(ms(took[len(took)/2]), "p50-ms")
	b.ReportMetric(ms(took[(len(took)*99)/100]), "p99-ms")
	b.ReportMetric(ms(took[len(took)-1]), "max-ms")
	b.ReportMetric(float64(len(took)), "cycles")
	b.ReportMetric(float64(queries), "queries")
	b.ReportMetric(float64(budgetSamples+idleSamples), "samples/cycle")
	b.ReportMetric(float64(budgetSamples), "budget-samples/cycle")
	// Prometheus refuses a query whose peak passes --query.max-samples
	// (50,000,000 by default).
	b.ReportMetric(float64(peak), "peak-samples")
	if e.controller != "" {
		// Cycles back to back, with room for the slowest.
		interval := max(10*time.Second, (2 * took[len(took)-1]).Round(time.Second))
		b.ReportMetric(controllerRSS(b, e, promURL, rec, interval), "rss-MiB")
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// truth checks the GPU-hours the mode measures against the history's own:
// each namespace used the sum of its pods' utilizations over 24 hours.
// Within 2%: the edges of a rate range or a scrape interval.
func truth(ctx context.Context, b *testing.B, q quota.Querier, at time.Time, n int, rec quota.Recording) {
	b.Helper()
	want := map[string]float64{}
	for node := range n {
		for _, p := range PodsOf(node) {
			want[p.Namespace] += p.Util * 24
		}
	}
	u, err := quota.Measure(ctx, q, []quota.Spec{{Budget: &budget}}, at, 10*time.Minute, quota.DefaultSeries, rec)
	if err != nil {
		b.Fatal(err)
	}
	key := quota.BudgetKey(budget)
	if rec.Interval > 0 && !u.Recorded[key] {
		b.Fatalf("the budget was not read from the recording rules: %s", u.RecordingGaps[key])
	}
	got := u.GPUHours[key]
	if len(got) != len(want) {
		b.Fatalf("%d namespaces measured, want %d", len(got), len(want))
	}
	worst := 0.0
	for ns, w := range want {
		worst = math.Max(worst, math.Abs(got[ns]-w)/w)
	}
	if worst > 0.02 {
		b.Fatalf("a namespace's GPU-hours are off by %.1f%% of the history's truth", 100*worst)
	}
	b.Logf("%s truth: GPU-hours of %d namespaces within %.2f%% of the history's", b.Name(), len(want), 100*worst)
}

// cycleSamples is what Prometheus read to answer one cycle's queries (its
// own query statistics, stats=all): for the budget, and for the idle
// evidence.
func cycleSamples(b *testing.B, promURL string, at time.Time, rec quota.Recording) (budgetSamples, idleSamples, peak int64) {
	b.Helper()
	bqs := []string{quota.BudgetQuery(budget, quota.DefaultSeries)}
	if rec.Interval > 0 {
		bqs = []string{quota.RecordedBudgetQuery(budget, quota.DefaultSeries, rec.Interval), quota.CoverageQuery(budget.Window.Duration, quota.DefaultSeries)}
	}
	maxQ, minQ, sumQ, countQ := quota.IdleQueries(idle.For.Duration, quota.DefaultSeries)
	iqs := []string{maxQ, minQ, sumQ, countQ, quota.BlindQuery(idle.For.Duration, quota.DefaultSeries), quota.UnknownQuery(idle.For.Duration, quota.DefaultSeries)}
	budgetSamples, p1 := querySamples(b, promURL, at, bqs)
	idleSamples, p2 := querySamples(b, promURL, at, iqs)
	return budgetSamples, idleSamples, max(p1, p2)
}

// querySamples is the samples Prometheus read for qs, and the most any
// of them held at once.
func querySamples(b *testing.B, promURL string, at time.Time, qs []string) (total, peak int64) {
	b.Helper()
	for _, promql := range qs {
		resp, err := http.Get(promURL + "/api/v1/query?" + url.Values{"query": {promql}, "time": {strconv.FormatInt(at.Unix(), 10)}, "stats": {"all"}}.Encode()) //nolint:noctx // a benchmark's loopback query
		if err != nil {
			b.Fatal(err)
		}
		var r struct {
			Data struct {
				Stats struct {
					Samples struct {
						TotalQueryableSamples int64 `json:"totalQueryableSamples"`
						PeakSamples           int64 `json:"peakSamples"`
					} `json:"samples"`
				} `json:"stats"`
			} `json:"data"`
		}
		err = json.NewDecoder(resp.Body).Decode(&r)
		_ = resp.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		total += r.Data.Stats.Samples.TotalQueryableSamples
		peak = max(peak, r.Data.Stats.Samples.PeakSamples)
	}
	return total, peak
}

// controllerRSS runs the real gpu-quota-controller against the cluster
// and Prometheus for 2 cycles, every interval, and returns its RSS
// high-water mark in MiB.
func controllerRSS(b *testing.B, e *env, promURL string, rec quota.Recording, interval time.Duration) float64 {
	b.Helper()
	port, err := apiserver.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := []string{"--kubeconfig=" + e.kubeconfig, "--prometheus-url=" + promURL, "--leader-elect=false", "--interval=" + interval.String(), "--query-timeout=" + interval.String(),
		"--scrape-interval=" + scrape.String(), "--metrics-address=" + addr, "--log-level=error"}
	if rec.Interval > 0 {
		args = append(args, "--recording-rules-interval="+rec.Interval.String())
	}
	p, err := apiserver.StartProcess("gpu-quota-controller", e.controller, args...)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Stop()
	counter := func(name string) float64 {
		mfs, err := promtest.Fetch("http://" + addr + "/metrics")
		if err != nil || mfs[name] == nil {
			return -1
		}
		return mfs[name].GetMetric()[0].GetCounter().GetValue()
	}
	for deadline := time.Now().Add(3*interval + time.Minute); counter("gpuslice_quota_evaluations_total") < 2; time.Sleep(time.Second) {
		if p.Exited() || time.Now().After(deadline) {
			b.Fatalf("gpu-quota-controller did not run 2 cycles in %s:\n%s", 3*interval+time.Minute, p.Logs.Tail(3000))
		}
	}
	if n := counter("gpuslice_quota_prometheus_errors_total"); n != 0 {
		b.Fatalf("gpu-quota-controller: %g cycles failed their queries:\n%s", n, p.Logs.Tail(3000))
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		b.Fatal(err)
	}
	for l := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb / 1024
		}
	}
	b.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}

// history writes n nodes' series over [from, to) as TSDB blocks in data.
func history(b *testing.B, blocks, data string, n int, from, to time.Time) (series, samples int) {
	b.Helper()
	cmd := exec.Command(blocks, "--out="+data, "--from="+strconv.FormatInt(from.Unix(), 10), "--to="+strconv.FormatInt(to.Unix(), 10), "--step="+scrape.String())
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	// The agents' other series: their last hour before the present.
	recent := to.Add(-150 * time.Minute)
	werr := func() error {
		defer func() { _ = in.Close() }()
		for node := range n {
			if err := WriteSeries(in, node, recent); err != nil {
				return err
			}
		}
		return nil
	}()
	if err := cmd.Wait(); err != nil || werr != nil {
		b.Fatalf("blocks: %v %v: %s", werr, err, strings.ReplaceAll(strings.TrimSpace(out.String()), "\n", "; "))
	}
	if _, err := fmt.Sscanf(out.String(), "%d series, %d samples", &series, &samples); err != nil {
		b.Fatalf("blocks said %q: %v", out.String(), err)
	}
	return series, samples
}

// backfillRules evaluates the chart's recording rules over the history
// with promtool against the running Prometheus, as an operator backfills
// new rules, and adds the blocks to data (Prometheus restarted after).
func backfillRules(b *testing.B, promURL, data string, from, to time.Time) {
	b.Helper()
	rules, err := quota.RecordingRules(quota.DefaultSeries, recording, scrape)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	file := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(file, []byte("groups:\n"+rules), 0o600); err != nil {
		b.Fatal(err)
	}
	outDir := filepath.Join(dir, "blocks")
	// Aligned to the interval, as Prometheus evaluates a group.
	start, end := from.Truncate(recording).Add(recording), to.Truncate(recording)
	cmd := exec.Command("promtool", "tsdb", "create-blocks-from", "rules", "--start="+strconv.FormatInt(start.Unix(), 10),
		"--end="+strconv.FormatInt(end.Unix(), 10), "--url="+promURL, "--output-dir="+outDir, "--eval-interval="+recording.String(), file)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("promtool create-blocks-from rules: %v\n%s", err, out)
	}
	entries, err := os.ReadDir(outDir)
	if err != nil {
		b.Fatal(err)
	}
	for _, d := range entries {
		if err := os.Rename(filepath.Join(outDir, d.Name()), filepath.Join(data, d.Name())); err != nil {
			b.Fatal(err)
		}
	}
}

// grow adds nodes [from, to)'s namespaces with their GPUQuotas, then their
// pods, running since two days ago as a kubelet reports them.
func grow(b *testing.B, e *env, from, to int) {
	b.Helper()
	ctx := context.Background()
	var namespaces []int
	for node := from; node < to; node++ {
		if node%NodesPerNamespace == 0 {
			namespaces = append(namespaces, node)
		}
	}
	parallel(b, namespaces, func(node int) error { return addNamespace(ctx, e, Namespace(node)) })
	started := metav1.NewTime(e.at.Add(-48 * time.Hour))
	var nodes []int
	for node := from; node < to; node++ {
		nodes = append(nodes, node)
	}
	parallel(b, nodes, func(node int) error { return addPods(ctx, e, node, started) })
}

// parallel runs f for each of items, 16 at a time, failing b on an error.
func parallel(b *testing.B, items []int, f func(int) error) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(items))
	sem := make(chan struct{}, 16)
	for _, it := range items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := f(it); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// addNamespace makes a namespace and its GPUQuota.
func addNamespace(ctx context.Context, e *env, ns string) error {
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	spec := map[string]any{"budget": map[string]any{"gpuHours": budget.GPUHours, "window": "24h"},
		"idle": map[string]any{"belowUtilization": idle.BelowUtilization, "for": "30m", "action": string(idle.Action)}}
	q := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "gpuslice.io/v1alpha1", "kind": "GPUQuota",
		"metadata": map[string]any{"name": "team", "namespace": ns}, "spec": spec}}
	_, err := e.dyn.Resource(quota.GVR).Namespace(ns).Create(ctx, q, metav1.CreateOptions{})
	return err
}

// addPods makes node's pods, running.
func addPods(ctx context.Context, e *env, node int, started metav1.Time) error {
	for _, p := range PodsOf(node) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace}, Spec: corev1.PodSpec{NodeName: NodeName(node), Containers: []corev1.Container{{
			Name: "main", Image: "example/train",
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/vgpu": *resource.NewQuantity(int64(p.Slices), resource.DecimalSI)}},
		}}}}
		created, err := e.cs.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &started}
		if _, err := e.cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// buildBlocks builds test/scale/blocks (its own module) into a temporary
// directory.
func buildBlocks(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "scale-blocks")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = "blocks"
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build test/scale/blocks: %v\n%s", err, out)
	}
	return bin
}

// ints parses a comma-separated list of positive integers; def when empty.
func ints(s string, def []int) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return def, nil
	}
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%q: want positive integers separated by commas", s)
		}
		out = append(out, v)
	}
	return out, nil
}
