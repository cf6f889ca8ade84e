package deployments_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/gpuslice/gpuslice/test/apiserver"
)

const chart = "helm/gpuslice"

// helmBin finds the helm test/e2e/build-helm.sh built, or skips (fails
// with GPUSLICE_REQUIRE_HELM, as in CI).
func helmBin(t *testing.T) string {
	t.Helper()
	base := os.Getenv("GPUSLICE_CACHE")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache", "gpuslice")
	}
	bin := filepath.Join(base, "helm-v3.18.6", "helm")
	if _, err := os.Stat(bin); err != nil {
		msg := "helm not built (run test/e2e/build-helm.sh): " + err.Error()
		if os.Getenv("GPUSLICE_REQUIRE_HELM") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

func helm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(helmBin(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestChartLint(t *testing.T) {
	helm(t, "lint", "--strict", chart)
	helm(t, "lint", "--strict", chart, "--set", "quotaController.enabled=true,quotaController.prometheusURL=http://prometheus:9090")
	helm(t, "lint", "--strict", chart, "--set", "slicing.sliceMemory=10Gi,mps.enabled=true,metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true")
}

func TestChartRendersTheManifestsObjects(t *testing.T) {
	objs := parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gpuslice",
		"--set", "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true"))
	kinds := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		kinds[o.GetKind()] = o
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service", "ServiceMonitor", "PrometheusRule"} {
		if kinds[k] == nil {
			t.Errorf("the chart renders no %s", k)
		}
	}
	// Same RBAC rules as deployments/daemonset.yaml.
	for _, o := range documents(t, "daemonset.yaml") {
		if o.GetKind() == "ClusterRole" && kinds["ClusterRole"] != nil && !reflect.DeepEqual(o.Object["rules"], kinds["ClusterRole"].Object["rules"]) {
			t.Errorf("the chart's RBAC rules differ from daemonset.yaml's:\n%v\n%v", kinds["ClusterRole"].Object["rules"], o.Object["rules"])
		}
	}
	// The ServiceMonitor keeps the agent's namespace/pod/container labels.
	if sm := kinds["ServiceMonitor"]; sm != nil {
		eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
		if len(eps) != 1 || eps[0].(map[string]any)["honorLabels"] != true {
			t.Errorf("the chart's ServiceMonitor endpoints %v lack honorLabels: true", eps)
		}
	}
	// The alerts are the monitoring directory's, untouched by templating.
	want, _, _ := unstructured.NestedSlice(documents(t, "monitoring/prometheusrule.yaml")[0].Object, "spec", "groups")
	if pr := kinds["PrometheusRule"]; pr != nil {
		got, _, _ := unstructured.NestedSlice(pr.Object, "spec", "groups")
		if !reflect.DeepEqual(got, want) {
			t.Error("the chart's alert groups differ from deployments/monitoring/prometheusrule.yaml: copy them into files/alert-groups.yaml")
		}
	}
	// Values reach the agent's flags.
	ds := parseDocs(t, helm(t, "template", "gpuslice", chart, "--set", "slicing.sliceMemory=10Gi,enforcement.computePolicy=strict,labels.gfd=false", "--show-only", "templates/daemonset.yaml"))[0]
	ctrs, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	args := strings.Join(toStrings(ctrs[0].(map[string]any)["args"]), " ")
	for _, want := range []string{"--slice-memory=10Gi", "--compute-policy=strict", "--gfd-labels=false", "--pod-compute-policy=stricter-only",
		"--unauthorized-gpu-use=kill", "--runtime-state-dirs=/host/run/containerd/io.containerd.runtime.v2.task/k8s.io,/host/run/containers/storage/overlay-containers"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %s", args, want)
		}
	}
	if strings.Contains(args, "--slices-per-gpu") {
		t.Errorf("agent args %q set both slicings", args)
	}
}

func toStrings(v any) []string {
	var out []string
	for _, s := range v.([]any) {
		out = append(out, s.(string))
	}
	return out
}

func TestChartServerSideDryRun(t *testing.T) {
	rendered := helm(t, "template", "gpuslice", chart, "--namespace", "gpuslice-chart", "--include-crds",
		"--set", "quotaController.enabled=true,quotaController.prometheusURL=http://prometheus.monitoring:9090")
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "gpuslice-chart"}}}
	dryRun(t, apiserver.Start(t), append([]*unstructured.Unstructured{ns}, parseDocs(t, rendered)...))
}
