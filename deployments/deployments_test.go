// Package deployments_test applies the shipped manifests to a real
// kube-apiserver with server-side dry-run, so a field the API rejects, a
// wrong kind or a broken reference fails here rather than on a cluster.
package deployments_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/test/apiserver"
)

// documents parses a multi-document YAML file.
func documents(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseDocs(t, string(data))
}

// parseDocs parses multi-document YAML text.
func parseDocs(t *testing.T, text string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, doc := range strings.Split(text, "\n---") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		if len(obj) > 0 {
			out = append(out, &unstructured.Unstructured{Object: obj})
		}
	}
	return out
}

// dryRun creates each object on the API server with server-side dry-run
// and strict field validation, reporting every rejection. Namespaces are
// created for real: later objects live in them.
func dryRun(t *testing.T, srv *apiserver.Server, objs []*unstructured.Unstructured) {
	t.Helper()
	create(t, srv, objs, true)
}

// create creates each object on the API server with strict field
// validation, for real or (dry) with server-side dry-run.
func create(t *testing.T, srv *apiserver.Server, objs []*unstructured.Unstructured, dry bool) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(srv.Clientset(t).Discovery()))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, o := range objs {
		mapping, err := mapper.RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
		if err != nil {
			t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
		var res dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if o.GetNamespace() != "" {
			res = dyn.Resource(mapping.Resource).Namespace(o.GetNamespace())
		}
		opts := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}
		if o.GetKind() == "Namespace" || !dry {
			opts.DryRun = nil
		}
		if _, err := res.Create(ctx, o, opts); err != nil {
			t.Errorf("%s %s rejected by the API server: %v", o.GetKind(), o.GetName(), err)
		}
	}
}

func TestManifestsServerSideDryRun(t *testing.T) {
	objs := documents(t, "daemonset.yaml")
	// The monitoring Service selects the agent's pods; the ServiceMonitor
	// needs the Prometheus Operator's CRD, which this API server lacks.
	monitoring := documents(t, "monitoring/servicemonitor.yaml")
	objs = append(objs, monitoring[0])
	dryRun(t, apiserver.Start(t), objs)

	kinds := map[string]bool{}
	var podLabels map[string]any
	for _, o := range objs {
		kinds[o.GetKind()] = true
		if o.GetKind() == "DaemonSet" {
			podLabels, _, _ = unstructured.NestedMap(o.Object, "spec", "template", "metadata", "labels")
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service"} {
		if !kinds[k] {
			t.Errorf("manifests lack a %s", k)
		}
	}
	selector, _, _ := unstructured.NestedMap(monitoring[0].Object, "spec", "selector")
	for k, v := range selector {
		if podLabels[k] != v {
			t.Errorf("the metrics Service selects %s=%v, which the agent's pods do not carry", k, v)
		}
	}
}

// TestDRAExamplesAreAccepted: the example claim templates and pod pass the
// API server's validation (CEL selectors compiled, capacity requests
// parsed), and a template whose selector does not compile is refused.
func TestDRAExamplesAreAccepted(t *testing.T) {
	srv := apiserver.Start(t)
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "ml"}}}
	objs := []*unstructured.Unstructured{ns}
	for _, f := range []string{"examples/dra/claim-templates.yaml", "examples/dra/pod.yaml"} {
		for _, o := range documents(t, f) {
			o.SetNamespace("ml")
			objs = append(objs, o)
		}
	}
	if len(objs) != 5 {
		t.Fatalf("examples hold %d objects, want three templates and a pod", len(objs)-1)
	}
	dryRun(t, srv, objs)

	broken := documents(t, "examples/dra/claim-templates.yaml")[1]
	broken.SetNamespace("ml")
	reqs, _, _ := unstructured.NestedSlice(broken.Object, "spec", "spec", "devices", "requests")
	sel := reqs[0].(map[string]any)["exactly"].(map[string]any)["selectors"].([]any)[0].(map[string]any)["cel"].(map[string]any)
	sel["expression"] = `device.attributes["gpu.gpuslice.io"].productName.startsWith(`
	_ = unstructured.SetNestedSlice(broken.Object, reqs, "spec", "spec", "devices", "requests")
	cs := srv.Clientset(t)
	data, err := broken.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.ResourceV1().RESTClient().Post().Namespace("ml").Resource("resourceclaimtemplates").Body(data).
		SetHeader("Content-Type", "application/json").Param("dryRun", "All").Do(context.Background()).Error(); err == nil {
		t.Error("a template whose CEL selector does not compile was accepted")
	}
}
