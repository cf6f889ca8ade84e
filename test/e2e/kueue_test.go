package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/pkg/kueuecheck"
	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

// kueueGroup is Kueue's API group; the scenarios use its v1beta2 API.
const kueueGroup = "kueue.x-k8s.io"

// kueueRes is a Kueue resource of the v1beta2 API.
func kueueRes(resource string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: kueueGroup, Version: "v1beta2", Resource: resource}
}

// kueueCache is where test/e2e/build-kueue.sh keeps Kueue's manager, its
// CRDs and its webhook manifests, for the version test/e2e/kueue pins.
func kueueCache() (string, error) {
	mod, err := os.ReadFile(filepath.Join("kueue", "go.mod"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[len(f)-2] == "sigs.k8s.io/kueue" {
			base := os.Getenv("GPUSLICE_CACHE")
			if base == "" {
				home, err := os.UserHomeDir()
				if err != nil {
					return "", err
				}
				base = filepath.Join(home, ".cache", "gpuslice")
			}
			return filepath.Join(base, "kueue-"+f[len(f)-1]), nil
		}
	}
	return "", errors.New("test/e2e/kueue/go.mod requires no sigs.k8s.io/kueue")
}

// startKueue installs Kueue's CRDs and its webhooks for Jobs and its own
// objects, and runs its real manager (integrations: batch/job) against the
// e2e cluster until the test ends. The webhooks are served on loopback
// with a test CA's certificate, which the webhook configurations carry.
// Without Kueue built the test fails under GPUSLICE_REQUIRE_KUEUE (CI sets
// it) and is skipped otherwise, saying so.
func startKueue(t *testing.T) dynamic.Interface {
	t.Helper()
	dir, err := kueueCache()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "kueue")); err != nil {
		msg := fmt.Sprintf("Kueue not built (run test/e2e/build-kueue.sh): %v", err)
		if os.Getenv("GPUSLICE_REQUIRE_KUEUE") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", c.API.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	installKueueCRDs(t, dyn, dir)
	caPEM, certPEM, keyPEM, err := apiserver.ServingCert()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	certs := filepath.Join(work, "certs")
	if err := os.MkdirAll(certs, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(certs, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	webhook, health := freePort(t), freePort(t)
	cfg := filepath.Join(work, "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: 127.0.0.1:%d
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: %d
  certDir: %s
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
integrations:
  frameworks: ["batch/job"]
`, health, webhook, certs)), 0o600); err != nil {
		t.Fatal(err)
	}
	// Without its own certificate management the manager reads its metrics
	// certificate from a fixed /etc/kueue/metrics/certs: it runs in a mount
	// namespace of its own, over a copy of /etc that has one, so the host's
	// /etc is never written.
	script := `set -e
cp -a /etc "$1/etc"
mkdir -p "$1/etc/kueue/metrics/certs"
cp "$2/tls.crt" "$2/tls.key" "$1/etc/kueue/metrics/certs/"
mount --bind "$1/etc" /etc
exec "$3" --config="$4" --kubeconfig="$5" --feature-gates=VisibilityOnDemand=false --zap-log-level=info`
	mgr, err := apiserver.StartProcess("kueue", "/usr/bin/unshare", "--mount", "--propagation", "private",
		"/bin/sh", "-c", script, "kueue", work, certs, filepath.Join(dir, "kueue"), cfg, c.API.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Kueue's manager:\n%s", mgr.Logs.Tail(60))
		}
		mgr.Stop()
	})
	installKueueWebhooks(t, dyn, dir, webhook, caPEM)
	waitFor(t, "Kueue's manager ready", 90*time.Second, func() bool {
		if mgr.Exited() {
			t.Fatalf("Kueue's manager exited:\n%s", mgr.Logs.Tail(40))
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", health)) //nolint:noctx // loopback, polled
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return dyn
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// installKueueCRDs creates Kueue's CRDs (once per cluster) and waits until
// each serves.
func installKueueCRDs(t *testing.T, dyn dynamic.Interface, dir string) {
	t.Helper()
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	files, err := filepath.Glob(filepath.Join(dir, "crd", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Kueue CRDs in %s: %v", dir, err)
	}
	var plurals []string
	for _, f := range files {
		for _, obj := range yamlObjects(t, f) {
			_, err := dyn.Resource(crds).Create(context.Background(), obj, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("create CRD %s: %v", obj.GetName(), err)
			}
			plural, _, _ := unstructured.NestedString(obj.Object, "spec", "names", "plural")
			plurals = append(plurals, plural)
		}
	}
	for _, p := range plurals {
		waitFor(t, "Kueue's "+p+" served", 30*time.Second, func() bool {
			_, err := dyn.Resource(kueueRes(p)).List(context.Background(), metav1.ListOptions{Limit: 1})
			return err == nil
		})
	}
}

// installKueueWebhooks creates Kueue's webhook configurations for Jobs and
// Kueue's own objects, pointing at the manager on loopback; they are
// deleted when the test ends, before the manager stops answering.
func installKueueWebhooks(t *testing.T, dyn dynamic.Interface, dir string, port int, caPEM []byte) {
	t.Helper()
	for _, obj := range yamlObjects(t, filepath.Join(dir, "webhooks.yaml")) {
		kind := obj.GetKind()
		res := schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: strings.ToLower(kind) + "s"}
		hooks, _, _ := unstructured.NestedSlice(obj.Object, "webhooks")
		var kept []any
		for _, h := range hooks {
			hook := h.(map[string]any)
			path, _, _ := unstructured.NestedString(hook, "clientConfig", "service", "path")
			if !strings.Contains(path, "-kueue-x-k8s-io-") && !strings.HasSuffix(path, "-batch-v1-job") {
				continue // frameworks this cluster does not run
			}
			hook["clientConfig"] = map[string]any{"url": fmt.Sprintf("https://127.0.0.1:%d%s", port, path), "caBundle": base64.StdEncoding.EncodeToString(caPEM)}
			kept = append(kept, hook)
		}
		if err := unstructured.SetNestedSlice(obj.Object, kept, "webhooks"); err != nil {
			t.Fatal(err)
		}
		obj.SetName("kueue-" + obj.GetName())
		if _, err := dyn.Resource(res).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s: %v", kind, obj.GetName(), err)
		}
		name := obj.GetName()
		t.Cleanup(func() { _ = dyn.Resource(res).Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
}

// yamlObjects reads a multi-document YAML file's objects.
func yamlObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*unstructured.Unstructured
	for _, doc := range bytes.Split(data, []byte("\n---")) {
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(m) > 0 {
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
	return out
}

// kueueQueues makes a ResourceFlavor, a ClusterQueue holding slices
// nominal slices of nvidia.com/vgpu (checks: its AdmissionChecks), and a
// LocalQueue in ns pointing at it; the ClusterQueue goes when the test
// ends. It returns the LocalQueue's name.
func kueueQueues(t *testing.T, dyn dynamic.Interface, ns string, slices int64, checks ...string) string {
	t.Helper()
	ctx := context.Background()
	create := func(res string, namespace string, obj map[string]any) {
		t.Helper()
		u := &unstructured.Unstructured{Object: obj}
		u.SetAPIVersion(kueueGroup + "/v1beta2")
		var err error
		if namespace == "" {
			_, err = dyn.Resource(kueueRes(res)).Create(ctx, u, metav1.CreateOptions{})
		} else {
			_, err = dyn.Resource(kueueRes(res)).Namespace(namespace).Create(ctx, u, metav1.CreateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create %s %s: %v", res, u.GetName(), err)
		}
		if namespace == "" && res != "resourceflavors" {
			name := u.GetName()
			t.Cleanup(func() { _ = dyn.Resource(kueueRes(res)).Delete(context.Background(), name, metav1.DeleteOptions{}) })
		}
	}
	create("resourceflavors", "", map[string]any{"kind": "ResourceFlavor", "metadata": map[string]any{"name": "gpuslice-e2e"}, "spec": map[string]any{}})
	cq := "cq-" + ns
	spec := map[string]any{
		"namespaceSelector": map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": ns}},
		"resourceGroups": []any{map[string]any{
			"coveredResources": []any{"nvidia.com/vgpu"},
			"flavors": []any{map[string]any{"name": "gpuslice-e2e", "resources": []any{
				map[string]any{"name": "nvidia.com/vgpu", "nominalQuota": slices},
			}}},
		}},
	}
	if len(checks) > 0 {
		var list []any
		for _, ch := range checks {
			list = append(list, map[string]any{"name": ch})
		}
		spec["admissionChecksStrategy"] = map[string]any{"admissionChecks": list}
	}
	create("clusterqueues", "", map[string]any{"kind": "ClusterQueue", "metadata": map[string]any{"name": cq}, "spec": spec})
	create("localqueues", ns, map[string]any{"kind": "LocalQueue", "metadata": map[string]any{"name": "gpus"}, "spec": map[string]any{"clusterQueue": cq}})
	return "gpus"
}

// kueueJob is a Job of one pod p, queued in a LocalQueue: Kueue's webhook
// suspends it until Kueue admits it.
func kueueJob(name, queue string, p *corev1.Pod) *batchv1.Job {
	zero, one := int32(0), int32(1)
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kueue.x-k8s.io/queue-name": queue}},
		Spec: batchv1.JobSpec{
			Parallelism: &one, Completions: &one, BackoffLimit: &zero,
			Template: corev1.PodTemplateSpec{Spec: p.Spec},
		},
	}
}

// jobPod waits for a running pod of a Job and returns it.
func jobPod(t *testing.T, ns, job string) *corev1.Pod {
	t.Helper()
	cs := c.API.Clientset(t)
	var running *corev1.Pod
	waitFor(t, "a running pod of Job "+job, 150*time.Second, func() bool {
		pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "job-name=" + job})
		if err != nil {
			return false
		}
		for i := range pods.Items {
			if pods.Items[i].Status.Phase == corev1.PodRunning {
				running = &pods.Items[i]
				return true
			}
		}
		return false
	})
	return running
}

// workloadOf waits for the Kueue Workload of a Job and returns it.
func workloadOf(t *testing.T, dyn dynamic.Interface, ns, job string, ok func(*unstructured.Unstructured) bool) *unstructured.Unstructured {
	t.Helper()
	var found *unstructured.Unstructured
	waitFor(t, "the Workload of Job "+job, 60*time.Second, func() bool {
		list, err := dyn.Resource(kueueRes("workloads")).Namespace(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for i := range list.Items {
			w := &list.Items[i]
			for _, o := range w.GetOwnerReferences() {
				if o.Kind == "Job" && o.Name == job && ok(w) {
					found = w
					return true
				}
			}
		}
		return false
	})
	return found
}

// condition is a status condition of an unstructured object, or nil.
func condition(obj *unstructured.Unstructured, kind string) map[string]any {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == kind {
			return m
		}
	}
	return nil
}

// TestKueueJobRunsOnSlices: a batch Job queued through a LocalQueue whose
// ClusterQueue holds nvidia.com/vgpu is suspended by Kueue's real webhook,
// admitted by its real manager, and runs on the slices it asked for; a
// second Job past the ClusterQueue's quota stays suspended, no pod
// created, until the first is gone.
func TestKueueJobRunsOnSlices(t *testing.T) {
	dyn := startKueue(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "kueue")
	queue := kueueQueues(t, dyn, ns, 3)
	first, err := cs.BatchV1().Jobs(ns).Create(ctx, kueueJob("train", queue, pod("train", 2, "sleep 3600")), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if first.Spec.Suspend == nil || !*first.Spec.Suspend {
		t.Fatal("Kueue's webhook did not suspend the queued Job")
	}
	w := workloadOf(t, dyn, ns, "train", func(w *unstructured.Unstructured) bool {
		cond := condition(w, "Admitted")
		return cond != nil && cond["status"] == "True"
	})
	t.Logf("Kueue admitted %s", w.GetName())
	p := jobPod(t, ns, "train")
	if got := assignment(t, ns, p.Name); len(got) != 2 {
		t.Fatalf("the admitted Job's pod holds %d slices, want 2: %v", len(got), got)
	}
	if _, err := cs.BatchV1().Jobs(ns).Create(ctx, kueueJob("over", queue, pod("over", 2, "sleep 3600")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	over := workloadOf(t, dyn, ns, "over", func(w *unstructured.Unstructured) bool {
		cond := condition(w, "QuotaReserved")
		return cond != nil && cond["status"] == "False"
	})
	t.Logf("over quota: %v", condition(over, "QuotaReserved")["message"])
	if pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=over"}); err != nil || len(pods.Items) != 0 {
		t.Fatalf("a Job past its ClusterQueue's quota has pods: %v (%v)", pods, err)
	}
	background := metav1.DeletePropagationBackground
	if err := cs.BatchV1().Jobs(ns).Delete(ctx, "train", metav1.DeleteOptions{PropagationPolicy: &background}); err != nil {
		t.Fatal(err)
	}
	jobPod(t, ns, "over")
}

// checkEntry is a Workload's entry for an admission check, or nil.
func checkEntry(w *unstructured.Unstructured, check string) map[string]any {
	entries, _, _ := unstructured.NestedSlice(w.Object, "status", "admissionChecks")
	for _, e := range entries {
		if m, ok := e.(map[string]any); ok && m["name"] == check {
			return m
		}
	}
	return nil
}

// TestKueueBudgetHoldsTheNextJob: gpu-quota-controller serves a Kueue
// AdmissionCheck for GPU-hour budgets, for a GPUQuota with admission
// Kueue (no ResourceQuota caps; one at what is held while the budget is
// spent, which stops a pod that skips Kueue). A Job runs through a ClusterQueue
// that lists it while the namespace's budget has room; once its measured
// GPU time (real Prometheus, real agent) spends the budget, the next Job
// stays unadmitted with the check's message naming the budget, and no pod
// is created for it; the running Job is left alone; when its use leaves
// the budget's 1-minute window, the next Job is admitted and runs.
func TestKueueBudgetHoldsTheNextJob(t *testing.T) {
	dyn := startKueue(t)
	rig := startQuotaRig(t, "--kueue-admission-check="+kueuecheck.DefaultControllerName)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "kueue-budget")
	check := "budget-" + ns
	ac := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": kueueGroup + "/v1beta2", "kind": "AdmissionCheck", "metadata": map[string]any{"name": check},
		"spec": map[string]any{"controllerName": kueuecheck.DefaultControllerName},
	}}
	if _, err := dyn.Resource(kueueRes("admissionchecks")).Create(ctx, ac, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dyn.Resource(kueueRes("admissionchecks")).Delete(context.Background(), check, metav1.DeleteOptions{})
	})
	waitFor(t, "the AdmissionCheck active", 30*time.Second, func() bool {
		got, err := dyn.Resource(kueueRes("admissionchecks")).Get(ctx, check, metav1.GetOptions{})
		cond := map[string]any(nil)
		if err == nil {
			cond = condition(got, "Active")
		}
		return cond != nil && cond["status"] == "True"
	})
	queue := kueueQueues(t, dyn, ns, 4, check)
	rig.gpuQuota(ns, map[string]any{"admission": "Kueue", "budget": map[string]any{"gpuHours": 0.0003, "window": "1m"}})
	// A Job whose most GPU-hours (1 slice of 1/4 GPU for 10 h, Kueue's
	// max-exec-time label) exceed the whole budget is held, saying so.
	huge := kueueJob("huge", queue, pod("huge", 1, "sleep 3600"))
	huge.Labels["kueue.x-k8s.io/max-exec-time-seconds"] = "36000"
	if _, err := cs.BatchV1().Jobs(ns).Create(ctx, huge, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w := workloadOf(t, dyn, ns, "huge", func(w *unstructured.Unstructured) bool {
		e := checkEntry(w, check)
		return e != nil && e["state"] == kueuecheck.StatePending && strings.Contains(fmt.Sprint(e["message"]), "more than the whole GPU-hour budget")
	})
	t.Logf("held: %v", checkEntry(w, check)["message"])
	background := metav1.DeletePropagationBackground
	if err := cs.BatchV1().Jobs(ns).Delete(ctx, "huge", metav1.DeleteOptions{PropagationPolicy: &background}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.BatchV1().Jobs(ns).Create(ctx, kueueJob("burner", queue, withHostPID(pod("burner", 1, "exec /bin/workload --demand 1 --memory-mib 256"))), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	burner := jobPod(t, ns, "burner")
	waitFor(t, "BudgetExhausted", 90*time.Second, func() bool { return rig.condition(ns, quota.ConditionBudgetExhausted) == "True" })
	if got := rig.condition(ns, quota.ConditionBudgetNotEnforced); got != "False" {
		t.Errorf("%s = %q, want False: the controller serves the check", quota.ConditionBudgetNotEnforced, got)
	}
	// The attack: a tenant skips Kueue with a plain pod (no queue name).
	// While the budget is spent a ResourceQuota at what is held stops it.
	waitFor(t, "the backstop ResourceQuota", 30*time.Second, func() bool {
		_, err := cs.CoreV1().ResourceQuotas(ns).Get(ctx, quota.QuotaName, metav1.GetOptions{})
		return err == nil
	})
	waitFor(t, "a pod bypassing Kueue refused", 30*time.Second, func() bool {
		_, err := cs.CoreV1().Pods(ns).Create(ctx, pod("bypass", 1, "sleep 3600"), metav1.CreateOptions{})
		if err == nil {
			t.Fatal("a pod that skipped Kueue was admitted while the namespace's budget is spent")
		}
		return strings.Contains(err.Error(), "exceeded quota")
	})
	if _, err := cs.BatchV1().Jobs(ns).Create(ctx, kueueJob("next", queue, pod("next", 1, "sleep 3600")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w = workloadOf(t, dyn, ns, "next", func(w *unstructured.Unstructured) bool {
		e := checkEntry(w, check)
		return e != nil && e["state"] == kueuecheck.StatePending && strings.Contains(fmt.Sprint(e["message"]), "spent") &&
			strings.Contains(fmt.Sprint(e["message"]), "room returns within about")
	})
	t.Logf("held: %v", checkEntry(w, check)["message"])
	// Held, not racing: still unadmitted and podless a few cycles later.
	time.Sleep(5 * time.Second)
	w = workloadOf(t, dyn, ns, "next", func(*unstructured.Unstructured) bool { return true })
	if cond := condition(w, "Admitted"); cond != nil && cond["status"] == "True" {
		t.Fatal("Kueue admitted a Job of a namespace whose GPU-hour budget is spent")
	}
	if pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=next"}); err != nil || len(pods.Items) != 0 {
		t.Fatalf("the held Job has pods: %v (%v)", pods, err)
	}
	if p, err := cs.CoreV1().Pods(ns).Get(ctx, burner.Name, metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
		t.Fatalf("the running Job was disturbed when the budget ran out: %v", err)
	}
	if err := cs.BatchV1().Jobs(ns).Delete(ctx, "burner", metav1.DeleteOptions{PropagationPolicy: &background}); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	jobPod(t, ns, "next")
	t.Logf("the next Job ran %s after the burner stopped (window 1m)", time.Since(stopped).Round(time.Second))
	// With room again, Kueue's ClusterQueue caps: no ResourceQuota.
	waitFor(t, "the backstop ResourceQuota gone", 30*time.Second, func() bool {
		_, err := cs.CoreV1().ResourceQuotas(ns).Get(ctx, quota.QuotaName, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	// A second LocalQueue whose ClusterQueue lists no check: named.
	side := &unstructured.Unstructured{Object: map[string]any{"apiVersion": kueueGroup + "/v1beta2", "kind": "LocalQueue",
		"metadata": map[string]any{"name": "side", "namespace": ns}, "spec": map[string]any{"clusterQueue": "cq-no-check-" + ns}}}
	if _, err := dyn.Resource(kueueRes("localqueues")).Namespace(ns).Create(ctx, side, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, quota.ConditionBudgetNotEnforced+" naming the queue that skips the check", 30*time.Second, func() bool {
		return rig.condition(ns, quota.ConditionBudgetNotEnforced) == "True"
	})
}

// TestKueueIdleWorkloadRequeued: with admission Kueue, an idle Job's pod
// is reclaimed through Kueue, not evicted: its Workload is deactivated,
// Kueue stops the Job, and the controller activates it again so Kueue
// requeues it (it is admitted and runs again: a new pod); a busy Job's pod
// on the same GPU is not touched, and no pod is evicted.
func TestKueueIdleWorkloadRequeued(t *testing.T) {
	dyn := startKueue(t)
	rig := startQuotaRig(t, "--kueue-admission-check="+kueuecheck.DefaultControllerName)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	ns := newNamespace(t, "kueue-idle")
	queue := kueueQueues(t, dyn, ns, 4)
	rig.gpuQuota(ns, map[string]any{"admission": "Kueue", "idle": map[string]any{"belowUtilization": 0.05, "for": "15s", "action": "Evict"}})
	for _, j := range []struct{ name, demand string }{{"sleeper", "0"}, {"worker", "0.5"}} {
		if _, err := cs.BatchV1().Jobs(ns).Create(ctx, kueueJob(j.name, queue, withHostPID(pod(j.name, 1, "exec /bin/workload --memory-mib 256 --demand "+j.demand))), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sleeper, worker := jobPod(t, ns, "sleeper"), jobPod(t, ns, "worker")
	if g1, g2 := assignmentGPU(t, ns, sleeper.Name), assignmentGPU(t, ns, worker.Name); g1 != g2 {
		t.Fatalf("the Jobs' pods are on different GPUs (%s, %s); the test needs them to share one", g1, g2)
	}
	start := time.Now()
	// Requeued and admitted again: a new pod of the same Job runs.
	var again *corev1.Pod
	waitFor(t, "the idle Job's Workload requeued and running again", 150*time.Second, func() bool {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=sleeper"})
		if err != nil {
			return false
		}
		for i := range pods.Items {
			if p := &pods.Items[i]; p.UID != sleeper.UID && p.Status.Phase == corev1.PodRunning {
				again = p
				return true
			}
		}
		return false
	})
	t.Logf("the idle Job ran again as %s %s after it started", again.Name, time.Since(start).Round(time.Second))
	if p, err := cs.CoreV1().Pods(ns).Get(ctx, worker.Name, metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		t.Errorf("the busy Job's pod was touched: %v", err)
	}
	events, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reclaimed := 0
	for _, e := range events.Items {
		switch e.Reason {
		case "GPUIdleEvicted":
			t.Errorf("a pod of a Kueue namespace was evicted, not reclaimed through Kueue: %s", e.Message)
		case "GPUIdleReclaimed":
			reclaimed++
		}
	}
	if reclaimed == 0 {
		t.Error("no GPUIdleReclaimed Event")
	}
	if j, err := cs.BatchV1().Jobs(ns).Get(ctx, "sleeper", metav1.GetOptions{}); err != nil || j.Status.Failed != 0 {
		t.Errorf("the reclaimed Job counts failures: %+v (%v)", j.Status, err)
	}
}
