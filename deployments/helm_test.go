package deployments_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/internal/nodeconfig"
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
	helm(t, "lint", "--strict", chart, "--set", "dra.enabled=true")
}

// TestChartDRA: dra.enabled adds gpu-dra-driver as its own DaemonSet with
// the agent's slicing, a DeviceClass, and --dra on the agent with the
// kubelet's directory mounted read-only; off, none of it renders.
func TestChartDRA(t *testing.T) {
	objs := parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gpuslice", "--set", "dra.enabled=true,slicing.slicesPerGPU=4,dra.taints.fatalEffect=NoSchedule",
		"--set-json", "dra.taints.fatalXIDs=[79]"))
	named := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		named[o.GetKind()+"/"+o.GetName()] = o
	}
	driver, agent := named["DaemonSet/gpuslice-dra-driver"], named["DaemonSet/gpuslice-agent"]
	if driver == nil || agent == nil || named["DeviceClass/gpu.gpuslice.io"] == nil || named["ClusterRole/gpuslice-dra-driver"] == nil {
		t.Fatalf("dra.enabled renders %v", keys(named))
	}
	args := func(ds *unstructured.Unstructured) string {
		ctrs, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
		return strings.Join(toStrings(ctrs[0].(map[string]any)["args"]), " ")
	}
	for _, want := range []string{"--config=/etc/gpuslice/node.yaml", "--cdi-dir=/var/run/cdi", "--kubelet-registrar-dir=/var/lib/kubelet/plugins_registry"} {
		if !strings.Contains(args(driver), want) {
			t.Errorf("driver args %q lack %s", args(driver), want)
		}
	}
	if !strings.Contains(args(agent), "--config=/etc/gpuslice/node.yaml") {
		t.Errorf("agent args %q lack --config", args(agent))
	}
	// One file for both: the agent's slicing, DRA on, the record both
	// name, and the same checksum rolling both DaemonSets.
	cfg := nodeConfig(t, named)
	rules, _ := cfg.SliceRules()
	if rules.Default.SlicesPerGPU != 4 || !cfg.DRA.Enabled || cfg.DRA.PreparedClaims != "/var/lib/gpuslice/dra-prepared.json" || cfg.DRA.ExtendedResource ||
		cfg.Driver.Taints.FatalEffect != "NoSchedule" || cfg.Driver.Taints.RecoverableEffect != "NoSchedule" || !reflect.DeepEqual(cfg.Driver.Taints.FatalXIDs, []uint64{79}) {
		t.Errorf("node config = %+v, slicing %+v", cfg, rules)
	}
	for _, ds := range []*unstructured.Unstructured{agent, driver} {
		mountsNodeConfig(t, ds)
	}
	sumA, _, _ := unstructured.NestedString(agent.Object, "spec", "template", "metadata", "annotations", "checksum/node-config")
	sumD, _, _ := unstructured.NestedString(driver.Object, "spec", "template", "metadata", "annotations", "checksum/node-config")
	if sumA == "" || sumA != sumD {
		t.Errorf("node config checksums %q (agent) and %q (driver): want one, set", sumA, sumD)
	}
	// The kubelet's root holds every pod's volumes (secrets, service
	// account tokens): the agent mounts only the parts it reads, never the
	// root or the pods' directories.
	vols, _, _ := unstructured.NestedSlice(agent.Object, "spec", "template", "spec", "volumes")
	for _, v := range vols {
		hp, ok := v.(map[string]any)["hostPath"].(map[string]any)
		if !ok {
			continue
		}
		p := strings.TrimSuffix(hp["path"].(string), "/")
		if p == "/var/lib/kubelet" || p == "/var/lib" || p == "/var" || p == "" || strings.HasPrefix(p, "/var/lib/kubelet/pods") {
			t.Errorf("with dra.enabled the agent mounts %s from the host, which holds every pod's volumes", hp["path"])
		}
	}
	for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart)) {
		if o.GetKind() == "DeviceClass" || strings.Contains(o.GetName(), "dra-driver") {
			t.Errorf("dra off renders %s/%s", o.GetKind(), o.GetName())
		}
	}
	// dra.extendedResource: slice devices, the class mapping the resource,
	// and an agent advertising no slices.
	named = map[string]*unstructured.Unstructured{}
	for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gpuslice", "--set", "dra.enabled=true,dra.extendedResource=true")) {
		named[o.GetKind()+"/"+o.GetName()] = o
	}
	class := named["DeviceClass/vgpu.gpuslice.io"]
	if class == nil {
		t.Fatalf("dra.extendedResource renders %v", keys(named))
	}
	if name, _, _ := unstructured.NestedString(class.Object, "spec", "extendedResourceName"); name != "nvidia.com/vgpu" {
		t.Errorf("the vgpu class maps %q, want nvidia.com/vgpu", name)
	}
	if cfg := nodeConfig(t, named); !cfg.DRA.ExtendedResource || !cfg.DRA.Enabled {
		t.Errorf("dra.extendedResource: node config %+v", cfg.DRA)
	}
	if named["DeviceClass/gpu.gpuslice.io"] == nil {
		t.Error("no share class beside the vgpu one")
	}
	// The quota controller caps claims of the chart's class and the extra
	// ones, and may list claims and the driver's slices; off, neither.
	for dra, want := range map[string]string{"true": "--dra-device-classes=gpu.gpuslice.io,shared.example.com", "false": ""} {
		named := map[string]*unstructured.Unstructured{}
		for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--set", "quotaController.enabled=true,quotaController.prometheusURL=http://p:9090,quotaController.extraDeviceClasses={shared.example.com},dra.enabled="+dra)) {
			named[o.GetKind()+"/"+o.GetName()] = o
		}
		ctrl, role := named["Deployment/gpuslice-quota-controller"], named["ClusterRole/gpuslice-quota-controller"]
		if ctrl == nil || role == nil {
			t.Fatalf("quotaController.enabled renders %v", keys(named))
		}
		got := ""
		for _, a := range strings.Fields(args(ctrl)) {
			if strings.HasPrefix(a, "--dra-device-classes") {
				got = a
			}
		}
		rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
		claims := strings.Contains(fmt.Sprint(rules), "resourceclaims")
		if got != want || claims != (want != "") {
			t.Errorf("dra.enabled=%s: controller flag %q, may list claims %v; want %q", dra, got, claims, want)
		}
	}
}

func keys(m map[string]*unstructured.Unstructured) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestChartRendersTheManifestsObjects(t *testing.T) {
	objs := parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gpuslice",
		"--set", "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true"))
	kinds := map[string]*unstructured.Unstructured{}
	named := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		kinds[o.GetKind()] = o
		named[o.GetKind()+"/"+o.GetName()] = o
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service", "ServiceMonitor", "PrometheusRule"} {
		if kinds[k] == nil {
			t.Errorf("the chart renders no %s", k)
		}
	}
	// Same RBAC rules and security settings as deployments/daemonset.yaml.
	role, ds := named["ClusterRole/gpuslice-agent"], named["DaemonSet/gpuslice-agent"]
	if role == nil || ds == nil {
		t.Fatal("the chart renders no gpuslice-agent ClusterRole or DaemonSet")
	}
	security := func(o *unstructured.Unstructured) [2]any {
		pod, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
		ctrs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		return [2]any{pod["securityContext"], ctrs[0].(map[string]any)["securityContext"]}
	}
	for _, o := range documents(t, "daemonset.yaml") {
		if o.GetKind() == "ClusterRole" && !reflect.DeepEqual(o.Object["rules"], role.Object["rules"]) {
			t.Errorf("the chart's RBAC rules differ from daemonset.yaml's:\n%v\n%v", role.Object["rules"], o.Object["rules"])
		}
		if o.GetKind() == "DaemonSet" && !reflect.DeepEqual(security(o), security(ds)) {
			t.Errorf("the chart's security contexts differ from daemonset.yaml's:\n%v\n%v", security(ds), security(o))
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
	// Values reach the agent's flags and the node config file.
	named = map[string]*unstructured.Unstructured{}
	for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--set", "slicing.sliceMemory=10Gi,enforcement.computePolicy=strict,labels.gfd=false",
		"--set-json", `slicing.models={"NVIDIA H200":{"slicesPerGPU":14}}`, "--set-json", "health.ignoredXIDs=[13,43]")) {
		named[o.GetKind()+"/"+o.GetName()] = o
	}
	cfg := nodeConfig(t, named)
	rules, _ := cfg.SliceRules()
	if rules.Default.SliceMemoryBytes != 10<<30 || rules.Default.SlicesPerGPU != 0 || rules.Models["NVIDIA H200"].SlicesPerGPU != 14 ||
		!reflect.DeepEqual(cfg.Health.IgnoredXIDs, []uint64{13, 43}) || cfg.DRA.Enabled {
		t.Errorf("node config = %+v, slicing %+v", cfg, rules)
	}
	ds = named["DaemonSet/gpuslice-agent"]
	ctrs, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	args := strings.Join(toStrings(ctrs[0].(map[string]any)["args"]), " ")
	for _, want := range []string{"--config=/etc/gpuslice/node.yaml", "--compute-policy=strict", "--gfd-labels=false", "--pod-compute-policy=stricter-only",
		"--unauthorized-gpu-use=kill", "--runtime-state-dirs=/host/run/containerd/io.containerd.runtime.v2.task/k8s.io,/host/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io,/host/run/containers/storage/overlay-containers"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %s", args, want)
		}
	}
	if strings.Contains(args, "--slices-per-gpu") || strings.Contains(args, "--slice-memory") {
		t.Errorf("agent args %q set slicing beside the node config", args)
	}
}

// nodeConfig is the rendered node config file, loaded and checked as both
// node binaries load it.
func nodeConfig(t *testing.T, named map[string]*unstructured.Unstructured) nodeconfig.Config {
	t.Helper()
	cm := named["ConfigMap/gpuslice-node-config"]
	if cm == nil {
		t.Fatalf("no node config ConfigMap among %v", keys(named))
	}
	data, _, _ := unstructured.NestedString(cm.Object, "data", "node.yaml")
	file := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := nodeconfig.Load([]string{"--config", file}, func(string) string { return "node-1" }, func(c *nodeconfig.Config) *flag.FlagSet {
		fs := flag.NewFlagSet("chart", flag.ContinueOnError)
		nodeconfig.SharedFlags(fs, c)
		return fs
	})
	if err != nil {
		t.Fatalf("the chart's node config does not load: %v\n%s", err, data)
	}
	if err := cfg.Check(); err != nil {
		t.Fatalf("the chart's node config does not check: %v\n%s", err, data)
	}
	return cfg
}

// mountsNodeConfig fails unless ds mounts the node config ConfigMap where
// --config reads it.
func mountsNodeConfig(t *testing.T, ds *unstructured.Unstructured) {
	t.Helper()
	spec, _, _ := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
	vol := ""
	for _, v := range spec["volumes"].([]any) {
		if cm, ok := v.(map[string]any)["configMap"].(map[string]any); ok && cm["name"] == "gpuslice-node-config" {
			vol = v.(map[string]any)["name"].(string)
		}
	}
	for _, m := range spec["containers"].([]any)[0].(map[string]any)["volumeMounts"].([]any) {
		if mm := m.(map[string]any); mm["name"] == vol && mm["mountPath"] == "/etc/gpuslice" {
			return
		}
	}
	t.Errorf("%s does not mount the node config at /etc/gpuslice", ds.GetName())
}

func toStrings(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, s := range list {
		out = append(out, s.(string))
	}
	return out
}

func TestChartServerSideDryRun(t *testing.T) {
	rendered := helm(t, "template", "gpuslice", chart, "--namespace", "gpuslice-chart", "--include-crds",
		"--set", "quotaController.enabled=true,quotaController.prometheusURL=http://prometheus.monitoring:9090,dra.enabled=true,dra.extendedResource=true,schedulerExtender.enabled=true,schedulerExtender.scheduler.enabled=true,slicing.span=never")
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "gpuslice-chart"}}}
	dryRun(t, apiserver.Start(t), append([]*unstructured.Unstructured{ns}, parseDocs(t, rendered)...))
}

// TestQuotaControllerPermissions installs the chart's RBAC for the quota
// controller on a real API server and asks it, as kubectl auth can-i --as
// does, what the controller's ServiceAccount may and may not do.
func TestQuotaControllerPermissions(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ctx := context.Background()
	for _, annotate := range []bool{true, false} {
		ns := fmt.Sprintf("gpuslice-rbac-%t", annotate)
		rendered := helm(t, "template", "gpuslice", chart, "--namespace", ns, "--show-only", "templates/quota-controller.yaml",
			"--set", fmt.Sprintf("quotaController.enabled=true,quotaController.prometheusURL=http://p:9090,quotaController.annotatePods=%t,fullnameOverride=%s", annotate, ns))
		objs := []*unstructured.Unstructured{{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}}
		for _, o := range parseDocs(t, rendered) {
			if o.GetKind() != "Deployment" {
				objs = append(objs, o)
			}
		}
		create(t, srv, objs, false)
		user := "system:serviceaccount:" + ns + ":" + ns + "-quota-controller"
		can := func(verb, resource, sub, name, namespace string) bool {
			t.Helper()
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Resource: resource, Subresource: sub, Name: name, Namespace: namespace,
					Group: map[string]string{"gpuquotas": "gpuslice.io", "leases": "coordination.k8s.io"}[resource]},
			}}
			out, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return out.Status.Allowed
		}
		// RBAC objects reach the authorizer's cache shortly after creation.
		for deadline := time.Now().Add(10 * time.Second); !can("list", "gpuquotas", "", "", ""); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the controller's role never took effect")
			}
		}
		for _, c := range []struct {
			verb, resource, sub, name, namespace string
			want                                 bool
		}{
			{"list", "gpuquotas", "", "", "", true},
			{"update", "gpuquotas", "status", "team", "ml", true},
			{"update", "gpuquotas", "", "team", "ml", false}, // the spec is the user's
			{"list", "resourcequotas", "", "gpuslice-gpu-quota", "", true},
			{"watch", "resourcequotas", "", "gpuslice-gpu-quota", "", true},
			{"update", "resourcequotas", "", "gpuslice-gpu-quota", "ml", true},
			{"delete", "resourcequotas", "", "gpuslice-gpu-quota", "ml", true},
			{"list", "resourcequotas", "", "", "", false}, // only its own, by name
			{"update", "resourcequotas", "", "compute-resources", "ml", false},
			{"delete", "resourcequotas", "", "compute-resources", "ml", false},
			{"list", "pods", "", "", "", true},
			{"create", "pods", "eviction", "train", "ml", true},
			{"patch", "pods", "", "train", "ml", annotate},
			{"delete", "pods", "", "train", "ml", false}, // evictions go through the Eviction API
			{"create", "pods", "", "", "ml", false},
			{"get", "secrets", "", "", "ml", false},
			{"update", "leases", "", "gpuslice-quota-controller", ns, true},
			{"update", "leases", "", "gpuslice-quota-controller", "kube-system", false},
		} {
			if got := can(c.verb, c.resource, c.sub, c.name, c.namespace); got != c.want {
				t.Errorf("annotatePods=%t: can %s %s/%s %q in %q = %t, want %t", annotate, c.verb, c.resource, c.sub, c.name, c.namespace, got, c.want)
			}
		}
		// The informer's own request, as the ServiceAccount: a list by name
		// passes, a list of everything is refused.
		cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:serviceaccounts", "system:authenticated"}}
		as := kubernetes.NewForConfigOrDie(cfg)
		if _, err := as.CoreV1().ResourceQuotas("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=gpuslice-gpu-quota"}); err != nil {
			t.Errorf("the controller's informer list is refused: %v", err)
		}
		if _, err := as.CoreV1().ResourceQuotas("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("listing every ResourceQuota = %v, want forbidden", err)
		}
	}
}

// TestQuotaControllerKueuePermissions: with kueueAdmissionCheck set the
// quota controller may read Kueue's AdmissionChecks, Workloads and queues, patch
// their status (the check's entry, the Active condition) and patch
// Workloads (spec.active, for idle reclaim), nothing else of Kueue's;
// without it, nothing of Kueue's at all.
func TestQuotaControllerKueuePermissions(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	for _, on := range []bool{true, false} {
		ns := fmt.Sprintf("gpuslice-kueue-rbac-%t", on)
		set := "quotaController.enabled=true,quotaController.prometheusURL=http://p:9090,fullnameOverride=" + ns
		if on {
			set += ",quotaController.kueueAdmissionCheck=gpuslice.io/gpu-budget"
		}
		objs := []*unstructured.Unstructured{{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}}
		for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", ns, "--show-only", "templates/quota-controller.yaml", "--set", set)) {
			if o.GetKind() != "Deployment" {
				objs = append(objs, o)
			}
		}
		create(t, srv, objs, false)
		can := accessOf(t, cs, "system:serviceaccount:"+ns+":"+ns+"-quota-controller", ns)
		for deadline := time.Now().Add(10 * time.Second); !can("list", "gpuslice.io", "gpuquotas", "", "", ""); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the controller's role never took effect")
			}
		}
		for _, c := range []struct {
			verb, resource, sub, name, namespace string
			want                                 bool
		}{
			{"list", "admissionchecks", "", "", "", on},
			{"watch", "workloads", "", "", "", on},
			{"patch", "admissionchecks", "status", "budget", "", on},
			{"patch", "workloads", "status", "job-train", "ml", on},
			{"patch", "workloads", "", "job-train", "ml", on}, // spec.active: idle reclaim through Kueue
			{"create", "workloads", "", "", "ml", false},
			{"update", "workloads", "status", "job-train", "ml", false},
			{"delete", "workloads", "", "job-train", "ml", false},
			{"patch", "admissionchecks", "", "budget", "", false},
			{"list", "localqueues", "", "", "", on}, // which queues skip the check
			{"watch", "clusterqueues", "", "", "", on},
			{"patch", "clusterqueues", "", "gpus", "", false},
			{"patch", "localqueues", "", "gpus", "ml", false},
		} {
			if got := can(c.verb, "kueue.x-k8s.io", c.resource, c.sub, c.name, c.namespace); got != c.want {
				t.Errorf("kueueAdmissionCheck set %t: can %s %s/%s %q in %q = %t, want %t", on, c.verb, c.resource, c.sub, c.name, c.namespace, got, c.want)
			}
		}
		// Nodes, read only, for a Workload's cost in slices of a GPU.
		if got := can("list", "", "nodes", "", "", ""); got != on {
			t.Errorf("kueueAdmissionCheck set %t: can list nodes = %t", on, got)
		}
		if can("patch", "", "nodes", "", "n", "") {
			t.Errorf("kueueAdmissionCheck set %t: can patch nodes", on)
		}
	}
}

// TestMetricsAuthRBAC installs the chart's RBAC with --metrics-auth=
// kubernetes on a real API server and asks, as kubectl auth can-i --as
// does, what the agent and the scrapers may do: the agent may create token
// and access reviews (and not without metrics auth), a bound reader may get
// /metrics, any other account may not. The NetworkPolicy and the
// ServiceMonitor's token render with it.
func TestMetricsAuthRBAC(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ctx := context.Background()
	for _, mode := range []string{"kubernetes", "none"} {
		ns := "gpuslice-metrics-" + mode
		// Cluster-scoped objects outlive each round: each round has its own reader.
		reader := "prom-" + mode
		set := fmt.Sprintf("metrics.auth.mode=%s,metrics.auth.readers[0].name=%s,metrics.auth.readers[0].namespace=monitoring,fullnameOverride=%s", mode, reader, ns)
		objs := []*unstructured.Unstructured{{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}}
		objs = append(objs, parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", ns, "--show-only", "templates/rbac.yaml", "--set", set))...)
		create(t, srv, objs, false)
		can := func(user string, attrs authorizationv1.SubjectAccessReviewSpec) bool {
			t.Helper()
			attrs.User, attrs.Groups = user, []string{"system:serviceaccounts", "system:authenticated"}
			out, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: attrs}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return out.Status.Allowed
		}
		agent := "system:serviceaccount:" + ns + ":" + ns + "-agent"
		review := func(group, resource string) authorizationv1.SubjectAccessReviewSpec {
			return authorizationv1.SubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "create", Group: group, Resource: resource}}
		}
		metrics := authorizationv1.SubjectAccessReviewSpec{NonResourceAttributes: &authorizationv1.NonResourceAttributes{Verb: "get", Path: "/metrics"}}
		// RBAC objects reach the authorizer's cache shortly after creation.
		for deadline := time.Now().Add(10 * time.Second); !can(agent, authorizationv1.SubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods"}}); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the agent's role never took effect")
			}
		}
		on := mode == "kubernetes"
		for _, c := range []struct {
			what string
			user string
			spec authorizationv1.SubjectAccessReviewSpec
			want bool
		}{
			{"agent creates token reviews", agent, review("authentication.k8s.io", "tokenreviews"), on},
			{"agent creates access reviews", agent, review("authorization.k8s.io", "subjectaccessreviews"), on},
			{"the bound reader gets /metrics", "system:serviceaccount:monitoring:" + reader, metrics, on},
			{"another account gets /metrics", "system:serviceaccount:ml:tenant", metrics, false},
			{"the agent gets /metrics", agent, metrics, false},
		} {
			if got := can(c.user, c.spec); got != c.want {
				t.Errorf("metrics.auth.mode=%s: %s = %t, want %t", mode, c.what, got, c.want)
			}
		}
	}
	rendered := helm(t, "template", "gpuslice", chart, "--set", "metrics.auth.mode=kubernetes,metrics.networkPolicy.enabled=true,metrics.serviceMonitor.enabled=true")
	var policy, monitor bool
	for _, o := range parseDocs(t, rendered) {
		switch o.GetKind() {
		case "NetworkPolicy":
			ports, _, _ := unstructured.NestedSlice(o.Object, "spec", "ingress")
			policy = len(ports) == 1
		case "ServiceMonitor":
			eps, _, _ := unstructured.NestedSlice(o.Object, "spec", "endpoints")
			monitor = len(eps) == 1 && eps[0].(map[string]any)["bearerTokenFile"] != nil
		}
	}
	if !policy || !monitor {
		t.Errorf("with metrics auth and the NetworkPolicy on: NetworkPolicy rendered %t, ServiceMonitor presents a token %t", policy, monitor)
	}
}

// TestAgentPermissions installs the chart's RBAC for the agent on a real
// API server and asks, as kubectl auth can-i --as does, what the agent's
// ServiceAccount may and may not do. Node get and patch cannot be narrowed
// to the agent's own node by RBAC (its name is not known when the chart is
// installed): docs/labels.md says what the agent patches.
func TestAgentPermissions(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ns := "gpuslice-agent-rbac"
	objs := []*unstructured.Unstructured{{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}}
	objs = append(objs, parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", ns, "--show-only", "templates/rbac.yaml", "--set", "fullnameOverride="+ns))...)
	create(t, srv, objs, false)
	can := accessOf(t, cs, "system:serviceaccount:"+ns+":"+ns+"-agent", ns)
	for deadline := time.Now().Add(10 * time.Second); !can("list", "", "pods", "", "", ""); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the agent's role never took effect")
		}
	}
	for _, c := range []struct {
		verb, group, resource, sub, name, namespace string
		want                                        bool
	}{
		{"get", "", "nodes", "", "gpu-node-1", "", true},   // its labels
		{"patch", "", "nodes", "", "gpu-node-1", "", true}, // its labels; any node: see above
		{"list", "", "pods", "", "", "", true},             // its node's pods' compute policies (field selector)
		{"watch", "", "pods", "", "", "", true},            // ... and their changes, so a new pod is known at once
		{"create", "", "events", "", "", "ml", true},       // an Event on the pod it acted on
		{"patch", "", "events", "", "x", "ml", true},       // ... and its repeats
		{"update", "", "nodes", "status", "gpu-node-1", "", false},
		{"delete", "", "nodes", "", "gpu-node-1", "", false},
		{"create", "", "nodes", "", "", "", false},
		{"get", "", "pods", "", "train", "ml", false}, // a list by node is all it needs
		{"patch", "", "pods", "", "train", "ml", false},
		{"delete", "", "pods", "", "train", "ml", false},
		{"create", "", "pods", "eviction", "train", "ml", false},
		{"get", "", "secrets", "", "", "ml", false},
		{"list", "", "secrets", "", "", "", false},
		{"get", "", "configmaps", "", "", "ml", false},
		{"create", "authentication.k8s.io", "tokenreviews", "", "", "", false}, // only with metrics auth
		{"update", "gpuslice.io", "gpuquotas", "status", "team", "ml", false},
		{"list", "resource.k8s.io", "resourceslices", "", "", "", false},
	} {
		if got := can(c.verb, c.group, c.resource, c.sub, c.name, c.namespace); got != c.want {
			t.Errorf("can %s %s/%s %q in %q = %t, want %t", c.verb, c.resource, c.sub, c.name, c.namespace, got, c.want)
		}
	}
}

// TestSchedulerExtenderPermissions installs the chart's RBAC for
// gpu-scheduler-extender on a real API server and asks what its
// ServiceAccount may do: read nodes and pods, patch nodes (its one label,
// slices.gpuslice.io/recheck), nothing else.
func TestSchedulerExtenderPermissions(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ns := "gpuslice-extender-rbac"
	objs := []*unstructured.Unstructured{{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}}
	objs = append(objs, parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", ns, "--show-only", "templates/scheduler-extender.yaml",
		"--set", "schedulerExtender.enabled=true,fullnameOverride="+ns))...)
	create(t, srv, objs, false)
	can := accessOf(t, cs, "system:serviceaccount:"+ns+":"+ns+"-scheduler-extender", ns)
	for deadline := time.Now().Add(10 * time.Second); !can("list", "", "pods", "", "", ""); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the extender's role never took effect")
		}
	}
	for _, c := range []struct {
		verb, group, resource, sub, name, namespace string
		want                                        bool
	}{
		{"list", "", "nodes", "", "", "", true},
		{"watch", "", "nodes", "", "", "", true},
		{"list", "", "pods", "", "", "", true},
		{"watch", "", "pods", "", "", "", true},
		{"patch", "", "nodes", "", "gpu-node-1", "", true}, // slices.gpuslice.io/recheck
		{"update", "", "nodes", "", "gpu-node-1", "", false},
		{"patch", "", "nodes", "status", "gpu-node-1", "", false},
		{"delete", "", "nodes", "", "gpu-node-1", "", false},
		{"patch", "", "pods", "", "train", "ml", false},
		{"create", "", "pods", "binding", "train", "ml", false}, // the scheduler binds
		{"delete", "", "pods", "", "train", "ml", false},
		{"get", "", "secrets", "", "", "ml", false},
	} {
		if got := can(c.verb, c.group, c.resource, c.sub, c.name, c.namespace); got != c.want {
			t.Errorf("can %s %s/%s %q in %q = %t, want %t", c.verb, c.resource, c.sub, c.name, c.namespace, got, c.want)
		}
	}
}

// accessOf asks the API server, as kubectl auth can-i --as does, whether
// a ServiceAccount of namespace ns may do a verb.
func accessOf(t *testing.T, cs kubernetes.Interface, user, ns string) func(verb, group, resource, sub, name, namespace string) bool {
	return func(verb, group, resource, sub, name, namespace string) bool {
		t.Helper()
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Group: group, Resource: resource, Subresource: sub, Name: name, Namespace: namespace},
		}}
		out, err := cs.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return out.Status.Allowed
	}
}

// TestDRADriverPermissions installs the chart's RBAC for gpu-dra-driver on
// a real API server and asks what its ServiceAccount may do: publish
// ResourceSlices and read claims, nothing else.
func TestDRADriverPermissions(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ns := "gpuslice-dra-rbac"
	objs := []*unstructured.Unstructured{{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}}
	for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", ns, "--show-only", "templates/dra-driver.yaml", "--set", "fullnameOverride="+ns+",dra.enabled=true,dra.deviceClass=false")) {
		if o.GetKind() != "DaemonSet" {
			objs = append(objs, o)
		}
	}
	create(t, srv, objs, false)
	access := accessOf(t, cs, "system:serviceaccount:"+ns+":"+ns+"-dra-driver", ns)
	can := func(verb, group, resource, namespace string) bool {
		t.Helper()
		r, sub, _ := strings.Cut(resource, "/")
		return access(verb, group, r, sub, "", namespace)
	}
	for deadline := time.Now().Add(10 * time.Second); !can("list", "resource.k8s.io", "resourceslices", ""); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the driver's role never took effect")
		}
	}
	for _, c := range []struct {
		verb, group, resource, namespace string
		want                             bool
	}{
		{"create", "resource.k8s.io", "resourceslices", "", true},
		{"delete", "resource.k8s.io", "resourceslices", "", true},
		{"get", "resource.k8s.io", "resourceclaims", "ml", true},
		{"patch", "resource.k8s.io", "resourceclaims/status", "ml", true},
		{"update", "resource.k8s.io", "resourceclaims/status", "ml", false},
		{"get", "", "nodes", "", true},
		{"update", "resource.k8s.io", "resourceclaims", "ml", false},
		{"create", "resource.k8s.io", "resourceclaims", "ml", false},
		{"list", "resource.k8s.io", "resourceclaims", "", false},
		{"create", "resource.k8s.io", "deviceclasses", "", false},
		{"patch", "", "nodes", "", false},
		{"list", "", "pods", "", false},
		{"get", "", "secrets", "ml", false},
	} {
		if got := can(c.verb, c.group, c.resource, c.namespace); got != c.want {
			t.Errorf("can %s %s.%s in %q = %t, want %t", c.verb, c.resource, c.group, c.namespace, got, c.want)
		}
	}
}

// TestChartProbesAndPolicy: by default the kubelet probes the agent and
// the DRA driver on health listeners of their own (clients of the metrics
// port cannot starve the probes, and the probes answer while a successor
// waits for the node lock), and a NetworkPolicy lets pods reach only the
// agent's metrics port, never the health ports.
func TestChartProbesAndPolicy(t *testing.T) {
	named := map[string]*unstructured.Unstructured{}
	for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gpuslice", "--set", "dra.enabled=true")) {
		named[o.GetKind()+"/"+o.GetName()] = o
	}
	for ds, port := range map[string]int64{"DaemonSet/gpuslice-agent": 9447, "DaemonSet/gpuslice-dra-driver": 9448} {
		if named[ds] == nil {
			t.Fatalf("%s not rendered: %v", ds, keys(named))
		}
		ctrs, _, _ := unstructured.NestedSlice(named[ds].Object, "spec", "template", "spec", "containers")
		c := ctrs[0].(map[string]any)
		if !slices.Contains(toStrings(c["args"]), fmt.Sprintf("--health-address=:%d", port)) {
			t.Errorf("%s args %v lack --health-address=:%d", ds, c["args"], port)
		}
		health := false
		for _, p := range c["ports"].([]any) {
			pp := p.(map[string]any)
			health = health || (pp["name"] == "health" && fmt.Sprint(pp["containerPort"]) == fmt.Sprint(port))
		}
		for _, probe := range []string{"livenessProbe", "readinessProbe"} {
			got, _, _ := unstructured.NestedFieldNoCopy(c, probe, "httpGet", "port")
			if got != "health" || !health {
				t.Errorf("%s %s on port %v (health port declared %t), want the health port %d", ds, probe, got, health, port)
			}
		}
	}
	agent, driver := named["NetworkPolicy/gpuslice-agent"], named["NetworkPolicy/gpuslice-agent-dra-driver"]
	if agent == nil || driver == nil {
		t.Fatalf("NetworkPolicies by default: %v", keys(named))
	}
	ingress, _, _ := unstructured.NestedSlice(agent.Object, "spec", "ingress")
	if len(ingress) != 1 || fmt.Sprint(ingress[0].(map[string]any)["ports"]) != "[map[port:9445 protocol:TCP]]" {
		t.Errorf("the agent's policy lets in %v, want the metrics port only", ingress)
	}
	if rules, found, _ := unstructured.NestedSlice(driver.Object, "spec", "ingress"); found || len(rules) != 0 {
		t.Errorf("the driver's policy lets in %v, want nothing", rules)
	}
}

// TestDRADriverWritesOnlyItsNodesSlices installs the driver's RBAC and the
// chart's ValidatingAdmissionPolicy on a real API server and acts as the
// driver with a token bound to its pod on node n1: it may create, update
// and delete n1's slices of its driver, and nothing else (another node's,
// a slice of no node, another driver's, moving its slice to another
// node). RBAC alone let it write every node's slices. The admin is not
// held by the policy.
func TestDRADriverWritesOnlyItsNodesSlices(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ctx := context.Background()
	ns := "gpuslice-dra-vap"
	objs := []*unstructured.Unstructured{{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}}
	for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", ns, "--show-only", "templates/dra-driver.yaml", "--set", "fullnameOverride="+ns+",dra.enabled=true,dra.deviceClass=false")) {
		if o.GetKind() != "DaemonSet" {
			objs = append(objs, o)
		}
	}
	create(t, srv, objs, false)
	sa := ns + "-dra-driver"
	for _, n := range []string{"n1", "n2"} {
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	no := false
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "driver"}, Spec: corev1.PodSpec{
		NodeName: "n1", ServiceAccountName: sa, AutomountServiceAccountToken: &no, Containers: []corev1.Container{{Name: "d", Image: "x"}},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg = rest.AnonymousClientConfig(cfg)
	cfg.BearerToken = tr.Status.Token
	driver := kubernetes.NewForConfigOrDie(cfg).ResourceV1().ResourceSlices()
	slice := func(name, node, drv string) *resourceapi.ResourceSlice {
		s := &resourceapi.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: resourceapi.ResourceSliceSpec{
			Driver: drv, Pool: resourceapi.ResourcePool{Name: "p", ResourceSliceCount: 1},
		}}
		if node == "" {
			s.Spec.AllNodes = ptr(true)
		} else {
			s.Spec.NodeName = ptr(node)
		}
		return s
	}
	// The policy reaches the admission chain shortly after it is created.
	var own *resourceapi.ResourceSlice
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := driver.Create(ctx, slice("probe", "n2", "gpu.gpuslice.io"), metav1.CreateOptions{})
		if err != nil && strings.Contains(err.Error(), "may write only") {
			break
		}
		if err == nil {
			_ = cs.ResourceV1().ResourceSlices().Delete(ctx, "probe", metav1.DeleteOptions{})
		}
		if time.Now().After(deadline) {
			t.Fatalf("the policy never took effect: %v", err)
		}
	}
	own, err = driver.Create(ctx, slice("n1-gpus", "n1", "gpu.gpuslice.io"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("the driver may not create its own node's slice: %v", err)
	}
	for what, s := range map[string]*resourceapi.ResourceSlice{
		"another node's slice":   slice("n2-gpus", "n2", "gpu.gpuslice.io"),
		"a slice of all nodes":   slice("all-gpus", "", "gpu.gpuslice.io"),
		"another driver's slice": slice("n1-nics", "n1", "nic.example.com"),
	} {
		if _, err := driver.Create(ctx, s, metav1.CreateOptions{}); err == nil {
			t.Errorf("the driver on n1 created %s", what)
		}
	}
	moved := own.DeepCopy()
	moved.Spec.NodeName = ptr("n2")
	if _, err := driver.Update(ctx, moved, metav1.UpdateOptions{}); err == nil {
		t.Error("the driver moved its slice to another node")
	}
	theirs, err := cs.ResourceV1().ResourceSlices().Create(ctx, slice("n2-admin", "n2", "gpu.gpuslice.io"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("the admin is held by the driver's policy: %v", err)
	}
	if err := driver.Delete(ctx, theirs.Name, metav1.DeleteOptions{}); err == nil {
		t.Error("the driver on n1 deleted n2's slice")
	}
	if err := driver.Delete(ctx, own.Name, metav1.DeleteOptions{}); err != nil {
		t.Errorf("the driver may not delete its own slice: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestSpentBudgetClosesExistingClaims installs the GPUQuota CRD and the
// chart's budget policy on a real API server: while a namespace's GPUQuota
// reports BudgetExhausted, a new pod naming an existing ResourceClaim is
// refused (the ResourceQuota only stops new claims, and up to 256 pods may
// share one); a pod naming no claim, a namespace whose budget recovered and
// a namespace without a GPUQuota are not affected.
func TestSpentBudgetClosesExistingClaims(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ctx := context.Background()
	crd := parseDocs(t, mustRead(t, "helm/gpuslice/crds/gpuslice.io_gpuquotas.yaml"))
	create(t, srv, crd, false)
	var policy []*unstructured.Unstructured
	for _, o := range parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gpuslice", "--show-only", "templates/quota-controller.yaml",
		"--set", "quotaController.enabled=true,quotaController.prometheusURL=http://p:9090,dra.enabled=true")) {
		if strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy") {
			policy = append(policy, o)
		}
	}
	if len(policy) != 2 {
		t.Fatalf("the chart renders %d policy objects, want the policy and its binding", len(policy))
	}
	gq := schema.GroupVersionResource{Group: "gpuslice.io", Version: "v1alpha1", Resource: "gpuquotas"}
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn := dynamic.NewForConfigOrDie(cfg)
	for _, ns := range []string{"spent", "free"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The CRD is served shortly after it is created.
	var quota *unstructured.Unstructured
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		quota, err = dyn.Resource(gq).Namespace("spent").Create(ctx, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "gpuslice.io/v1alpha1", "kind": "GPUQuota", "metadata": map[string]any{"name": "team"},
			"spec": map[string]any{"budget": map[string]any{"gpuHours": 1, "window": "24h"}},
		}}, metav1.CreateOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	setExhausted := func(on string) {
		t.Helper()
		quota.Object["status"] = map[string]any{"conditions": []any{map[string]any{
			"type": "BudgetExhausted", "status": on, "reason": "Budget", "message": "test", "lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}}}
		var err error
		if quota, err = dyn.Resource(gq).Namespace("spent").UpdateStatus(ctx, quota, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setExhausted("True")
	create(t, srv, policy, false)
	claimPod := func(ns, name string, claim bool) error {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		if claim {
			p.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: ptr("shared-gpu")}}
			p.Spec.Containers[0].Resources.Claims = []corev1.ResourceClaim{{Name: "gpu"}}
		}
		_, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		return err
	}
	// The policy reaches the admission chain shortly after it is created.
	for deadline, i := time.Now().Add(20*time.Second), 0; ; i++ {
		err := claimPod("spent", fmt.Sprint("probe-", i), true)
		if err != nil && strings.Contains(err.Error(), "is spent") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a pod naming an existing claim was admitted in a namespace whose budget is spent: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := claimPod("spent", "no-claim", false); err != nil {
		t.Errorf("a pod naming no claim was refused: %v", err)
	}
	if err := claimPod("free", "claim", true); err != nil {
		t.Errorf("a pod in a namespace without a GPUQuota was refused: %v", err)
	}
	setExhausted("False")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err := claimPod("spent", "recovered", true)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the budget recovered and a pod naming a claim is still refused: %v", err)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
