package multinode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/internal/fakegpu/protocol"
	"github.com/gpuslice/gpuslice/test/e2e/cluster"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// The chart's release and the ports its agent serves on every node (the
// chart's defaults: each node has its own network namespace, as each real
// node has its own addresses).
const (
	release       = "gpuslice"
	releaseNS     = "gpuslice-system"
	metricsPort   = 9445
	slicesPerGPU  = 4
	fakeConfig    = cluster.NodeDir + "/fakegpu.yaml"
	runtimeTasks  = cluster.NodeDir + "/containerd/state/io.containerd.runtime.v2.task/k8s.io"
	agentSelector = "app.kubernetes.io/component=agent"
)

// chartValues are the values this cluster needs beyond a user's install:
// no pod network (host network and the not-ready taint), no kube-proxy
// (the API server's address), and the fake GPU (its backend and files,
// at the same path on every node).
func chartValues(extra map[string]any) (string, error) {
	apiPort := m.API.URL[strings.LastIndex(m.API.URL, ":")+1:]
	v := map[string]any{
		"image":       map[string]any{"tag": imageTag, "pullPolicy": "Never"},
		"hostNetwork": true,
		"apiServer":   map[string]any{"host": cluster.Gateway, "port": apiPort},
		"tolerations": []map[string]any{{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}},
		"slicing":     map[string]any{"slicesPerGPU": slicesPerGPU},
		"enforcement": map[string]any{"computePolicy": "strict"},
		"metrics":     map[string]any{"sampleInterval": "500ms"},
		"runtime":     map[string]any{"stateDirs": []string{runtimeTasks}},
		"extraArgs":   []string{"--gpu-backend=fake", "--fake-config=" + fakeConfig, "--dev-root=" + cluster.NodeDir + "/dev"},
		"extraVolumes": []map[string]any{
			{"name": "node-files", "hostPath": map[string]any{"path": cluster.NodeDir, "type": "Directory"}},
		},
		"extraVolumeMounts": []map[string]any{{"name": "node-files", "mountPath": cluster.NodeDir}},
	}
	for k, val := range extra {
		v[k] = val
	}
	data, err := yaml.Marshal(v)
	if err != nil {
		return "", err
	}
	path := filepath.Join(m.Dir, fmt.Sprintf("values-%d.yaml", time.Now().UnixNano()))
	return path, os.WriteFile(path, data, 0o600)
}

// runHelm runs helm (test/e2e/build-helm.sh) against the cluster from the
// repository's root.
func runHelm(args ...string) (string, error) {
	bin, err := exec.Command("../build-helm.sh").Output()
	if err != nil {
		return "", fmt.Errorf("build-helm.sh: %w", err)
	}
	cmd := exec.Command(strings.TrimSpace(string(bin)), args...)
	cmd.Dir = "../../.."
	cmd.Env = append(os.Environ(), "KUBECONFIG="+m.API.Kubeconfig, "HELM_CACHE_HOME="+filepath.Join(m.Dir, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(m.Dir, "helm", "config"), "HELM_DATA_HOME="+filepath.Join(m.Dir, "helm", "data"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// installChart installs the chart as a user does, on every GPU node.
func installChart() error {
	values, err := chartValues(nil)
	if err != nil {
		return err
	}
	if out, err := runHelm("install", release, "deployments/helm/gpuslice", "--namespace", releaseNS, "--create-namespace",
		"-f", values, "--wait", "--timeout", "4m"); err != nil {
		return fmt.Errorf("helm install: %w\n%s", err, out)
	}
	return nil
}

// namespace creates a namespace for one scenario, deleted with its pods
// after it.
func namespace(t *testing.T, prefix string) string {
	t.Helper()
	cs := m.API.Clientset(t)
	ctx := context.Background()
	ns := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%100000)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		waitFor(t, "pods of "+ns+" gone", 60*time.Second, func() bool {
			pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err == nil && len(pods.Items) == 0
		})
		_ = cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	})
	waitFor(t, "default ServiceAccount of "+ns, 30*time.Second, func() bool {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	})
	return ns
}

// workloadPod is a pod asking for slices whose container is a fake GPU
// workload wanting demand of a whole GPU, in the host's PID namespace
// (the fake driver, like NVML, knows host PIDs), with its node's fake GPU
// directory mounted at the same path on every node. The scheduler places
// it, unless onNode pins it.
func workloadPod(name string, slices int64, demand, onNode string) *corev1.Pod {
	zero := int64(0)
	dir := corev1.HostPathDirectory
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			HostNetwork: true, HostPID: true,
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists},
			},
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "main", Image: cluster.TestImage, ImagePullPolicy: corev1.PullNever,
				Command:      []string{"/bin/workload", "--memory-mib", "512", "--demand", demand},
				Env:          []corev1.EnvVar{{Name: "GPUSLICE_FAKE_WORKLOAD_DIR", Value: cluster.NodeDir + "/fakegpu"}},
				VolumeMounts: []corev1.VolumeMount{{Name: "fakegpu", MountPath: cluster.NodeDir + "/fakegpu"}},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
					"nvidia.com/vgpu": *resource.NewQuantity(slices, resource.DecimalSI)}},
			}},
			Volumes: []corev1.Volume{{Name: "fakegpu", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: cluster.NodeDir + "/fakegpu", Type: &dir}}}},
		},
	}
	if onNode != "" {
		p.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": onNode}
	}
	return p
}

// create creates pods in ns.
func create(t *testing.T, ns string, pods ...*corev1.Pod) {
	t.Helper()
	cs := m.API.Clientset(t)
	for _, p := range pods {
		if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod %s: %v", p.Name, err)
		}
	}
}

// waitRunning waits until the pod runs and returns it.
func waitRunning(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	cs := m.API.Clientset(t)
	var p *corev1.Pod
	waitFor(t, "pod "+ns+"/"+name+" running", 90*time.Second, func() bool {
		var err error
		p, err = cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	return p
}

// waitFor polls ok every half second for up to d.
func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, d)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// node returns the cluster's node by name.
func node(name string) *cluster.Node {
	for _, n := range m.Nodes {
		if n.Name == name {
			return n
		}
	}
	panic("no node " + name)
}

// workedSeconds is what a pod's fake GPU workload says it asked the GPU
// for so far (its own account, published atomically in its node's fake
// GPU directory): an independent measure of its GPU time, not the
// agent's.
func workedSeconds(t *testing.T, p *corev1.Pod) float64 {
	t.Helper()
	f := filepath.Join(node(p.Spec.NodeName).HostWorkloadDir(), strconv.Itoa(workloadPID(t, p))+".json")
	data, err := os.ReadFile(f)
	if err != nil {
		t.Fatalf("workload state of %s/%s: %v", p.Namespace, p.Name, err)
	}
	var st protocol.WorkloadState
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("workload state %s: %v", f, err)
	}
	return float64(st.RequestedNanos) / 1e9
}

// workloadPID is the host PID of a pod's fake GPU workload, found among
// its node's workloads by the pod's UID in the process's cgroup.
func workloadPID(t *testing.T, p *corev1.Pod) int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(node(p.Spec.NodeName).HostWorkloadDir(), "*.json"))
	uid := string(p.UID)
	for _, f := range files {
		pid, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(f), ".json"))
		if err != nil {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
		if err == nil && (strings.Contains(string(cg), uid) || strings.Contains(string(cg), strings.ReplaceAll(uid, "-", "_"))) {
			return pid
		}
	}
	t.Fatalf("no fake GPU workload of pod %s/%s on %s", p.Namespace, p.Name, p.Spec.NodeName)
	return 0
}

// agentMetrics reads a node's agent's /metrics, at the node's address.
func agentMetrics(n *cluster.Node) (map[string]*dto.MetricFamily, error) {
	return promtest.Fetch(fmt.Sprintf("http://%s:%d/metrics", n.IP, metricsPort))
}

// label is a series' label value.
func label(s *dto.Metric, name string) string {
	for _, l := range s.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// waitAgentReports waits until the agent of the pod's node reports the
// pod's GPU memory on one of that node's own GPUs, and checks no other
// node's agent reports the pod.
func waitAgentReports(t *testing.T, p *corev1.Pod) {
	t.Helper()
	var last string
	reported := func() bool {
		mfs, err := agentMetrics(node(p.Spec.NodeName))
		if err != nil {
			last = err.Error()
			return false
		}
		own := map[string]bool{}
		for name, mf := range mfs {
			if name == "gpuslice_device_info" {
				for _, s := range mf.GetMetric() {
					own[label(s, "uuid")] = true
				}
			}
		}
		for _, s := range mfs["gpuslice_container_memory_used_bytes"].GetMetric() {
			if label(s, "namespace") == p.Namespace && label(s, "pod") == p.Name {
				last = fmt.Sprintf("%s on %s (node's GPUs %v)", label(s, "uuid"), p.Spec.NodeName, own)
				return own[label(s, "uuid")] && s.GetGauge().GetValue() == 512<<20
			}
		}
		last = fmt.Sprintf("no series of the pod among %d of memory", len(mfs["gpuslice_container_memory_used_bytes"].GetMetric()))
		return false
	}
	for deadline := time.Now().Add(60 * time.Second); !reported(); time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the agent of %s never reported %s/%s on its own GPU: %s", p.Spec.NodeName, p.Namespace, p.Name, last)
		}
	}
	t.Logf("%s/%s: %s", p.Namespace, p.Name, last)
	for _, n := range m.Nodes {
		if n.Name == p.Spec.NodeName || !n.HasGPU {
			continue
		}
		mfs, err := agentMetrics(n)
		if err != nil {
			t.Fatalf("agent of %s: %v", n.Name, err)
		}
		for _, s := range mfs["gpuslice_container_memory_used_bytes"].GetMetric() {
			if label(s, "namespace") == p.Namespace && label(s, "pod") == p.Name {
				t.Errorf("the agent of %s reports %s/%s, which runs on %s", n.Name, p.Namespace, p.Name, p.Spec.NodeName)
			}
		}
	}
}
