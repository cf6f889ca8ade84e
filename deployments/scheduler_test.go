package deployments_test

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	schedconfig "k8s.io/kube-scheduler/config/v1"
	"sigs.k8s.io/yaml"
)

func named(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	out := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		out[o.GetKind()+"/"+o.GetName()] = o
	}
	return out
}

func containerArgs(t *testing.T, d *unstructured.Unstructured, i int) (name string, args []string) {
	t.Helper()
	ctrs, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	if len(ctrs) <= i {
		t.Fatalf("%s has %d containers", d.GetName(), len(ctrs))
	}
	c := ctrs[i].(map[string]any)
	all := append(toStrings(c["command"]), toStrings(c["args"])...)
	return c["name"].(string), all
}

// TestChartSchedulerExtender: the second scheduler's configuration is one
// kube-scheduler reads (decoded strictly into its own types), calls the
// extender beside it for the chart's resource, and the extender runs one
// replica; without the second scheduler, a Service for yours.
func TestChartSchedulerExtender(t *testing.T) {
	objs := named(parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gs",
		"--set", "schedulerExtender.enabled=true,schedulerExtender.scheduler.enabled=true,resourceName=example.com/slice")))
	cm, dep := objs["ConfigMap/gpuslice-scheduler-extender"], objs["Deployment/gpuslice-scheduler-extender"]
	if cm == nil || dep == nil || objs["ClusterRoleBinding/gpuslice-scheduler-extender-kube-scheduler"] == nil {
		t.Fatalf("renders %v", keys(objs))
	}
	raw, _, _ := unstructured.NestedString(cm.Object, "data", "config.yaml")
	var cfg schedconfig.KubeSchedulerConfiguration
	if err := yaml.UnmarshalStrict([]byte(raw), &cfg); err != nil {
		t.Fatalf("kube-scheduler cannot read the configuration: %v\n%s", err, raw)
	}
	if len(cfg.Profiles) != 1 || *cfg.Profiles[0].SchedulerName != "gpuslice-scheduler" || len(cfg.Extenders) != 1 {
		t.Fatalf("configuration %+v", cfg)
	}
	x := cfg.Extenders[0]
	if x.URLPrefix != "http://127.0.0.1:9451" || x.FilterVerb != "filter" || x.PrioritizeVerb != "prioritize" || !x.NodeCacheCapable ||
		len(x.ManagedResources) != 1 || x.ManagedResources[0].Name != "example.com/slice" || x.Ignorable {
		t.Fatalf("extender %+v", x)
	}
	if r, _, _ := unstructured.NestedFieldNoCopy(dep.Object, "spec", "replicas"); fmt.Sprint(r) != "1" {
		t.Fatalf("%v replicas of the extender, want 1", r)
	}
	name, args := containerArgs(t, dep, 0)
	if name != "extender" || !strings.Contains(strings.Join(args, " "), "--listen-address=127.0.0.1:9451 --resource-name=example.com/slice") {
		t.Fatalf("extender container %s %v", name, args)
	}
	if name, args := containerArgs(t, dep, 1); name != "kube-scheduler" || !strings.Contains(strings.Join(args, " "), "--config=/etc/gpuslice-scheduler/config.yaml") {
		t.Fatalf("scheduler container %s %v", name, args)
	}

	own := named(parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gs", "--set", "schedulerExtender.enabled=true")))
	if own["Service/gpuslice-scheduler-extender"] == nil || own["ConfigMap/gpuslice-scheduler-extender"] != nil {
		t.Fatalf("for your own scheduler renders %v", keys(own))
	}
	if _, args := containerArgs(t, own["Deployment/gpuslice-scheduler-extender"], 0); !strings.Contains(strings.Join(args, " "), "--listen-address=:9451") {
		t.Fatalf("extender args %v", args)
	}
	if none := named(parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gs"))); none["Deployment/gpuslice-scheduler-extender"] != nil {
		t.Fatal("the extender renders by default")
	}
}

// TestChartSpan: the agent gets --span, and may write its node's status
// only with --span=never, which needs it.
func TestChartSpan(t *testing.T) {
	for _, span := range []string{"fewest", "never"} {
		objs := named(parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gs", "--set", "slicing.span="+span)))
		_, args := containerArgs(t, objs["DaemonSet/gpuslice-agent"], 0)
		if !strings.Contains(strings.Join(args, " "), "--span="+span+" --span-hold-back=30s") {
			t.Errorf("span %s: agent args %v", span, args)
		}
		rules, _, _ := unstructured.NestedSlice(objs["ClusterRole/gpuslice-agent"].Object, "rules")
		status := false
		for _, r := range rules {
			if strings.Contains(strings.Join(toStrings(r.(map[string]any)["resources"]), ","), "nodes/status") {
				status = true
			}
		}
		if status != (span == "never") {
			t.Errorf("span %s: nodes/status in the agent's role = %t", span, status)
		}
	}
}

// TestChartSizedClasses: dra.sizes gives the driver its sizes (in the node
// config), a DeviceClass per size mapping <resource>-<k>, and the quota
// controller the classes to cap.
func TestChartSizedClasses(t *testing.T) {
	objs := named(parseDocs(t, helm(t, "template", "gpuslice", chart, "--namespace", "gs",
		"--set", "dra.enabled=true,quotaController.enabled=true,quotaController.prometheusURL=http://p:9090", "--set-json", "dra.sizes=[2,4]")))
	if cfg := nodeConfig(t, objs); fmt.Sprint(cfg.Driver.Sizes) != "[2 4]" {
		t.Errorf("node config sizes %v", cfg.Driver.Sizes)
	}
	for _, k := range []string{"2", "4"} {
		class := objs["DeviceClass/vgpu-"+k+".gpuslice.io"]
		if class == nil {
			t.Fatalf("no class for size %s: %v", k, keys(objs))
		}
		if name, _, _ := unstructured.NestedString(class.Object, "spec", "extendedResourceName"); name != "nvidia.com/vgpu-"+k {
			t.Errorf("size %s maps %q", k, name)
		}
	}
	_, args := containerArgs(t, objs["Deployment/gpuslice-quota-controller"], 0)
	if !strings.Contains(strings.Join(args, " "), "--dra-device-classes=gpu.gpuslice.io,vgpu-2.gpuslice.io,vgpu-4.gpuslice.io") {
		t.Errorf("controller args %v", args)
	}
}
