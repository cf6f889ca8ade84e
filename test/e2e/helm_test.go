package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/e2e/cluster"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// The release the install test makes, as the README names it.
const (
	helmRelease   = "gpuslice"
	helmNamespace = "gpuslice-system"
	helmTag       = "e2e"
	agentSA       = "system:serviceaccount:" + helmNamespace + ":" + helmRelease + "-agent"
	controllerSA  = "system:serviceaccount:" + helmNamespace + ":" + helmRelease + "-quota-controller"
	driverSA      = "system:serviceaccount:" + helmNamespace + ":" + helmRelease + "-dra-driver"
)

// TestHelmInstall installs gpuslice as a user does: the images make image
// builds, imported into containerd, and helm install of the chart, with
// values only for what this cluster lacks (a pod network, kube-proxy and a
// GPU). The agent then runs as the chart's DaemonSet pod, not privileged,
// with its own ServiceAccount and in-cluster config, and the quota
// controller as the chart's Deployment. The agent started beside the
// kubelet for the other tests is stopped meanwhile and started again after.
func TestHelmInstall(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	c.StopAgent()
	c.StopDRADriver()
	t.Cleanup(func() {
		if err := c.StartAgent(); err != nil {
			t.Errorf("restart the tier's agent: %v", err)
			return
		}
		waitAgentRegistrations(t, 1)
		waitAllocatable(t, 8)
		if c.DRA() {
			if err := c.StartDRADriver(); err != nil {
				t.Errorf("restart the tier's DRA driver: %v", err)
			}
		}
	})
	metricsPort, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	// A Prometheus scraping the chart's agent, for the quota controller.
	prom, _ := promtest.Start(t, promtest.StaticTarget("gpuslice-agent", fmt.Sprintf("127.0.0.1:%d", metricsPort), cluster.NodeName))
	// The chart's agent has its own copy of the fake GPU's file, to turn
	// on the driver tier without touching the tier's other agent.
	fakeConfig := filepath.Join(c.Dir, "fakegpu-chart.yaml")
	orig, err := os.ReadFile(c.FakeConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fakeConfig, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	if c.DRA() {
		// The chart creates the DeviceClass the DRA scenarios made for
		// themselves: helm refuses to adopt one it did not create.
		if err := cs.ResourceV1().DeviceClasses().Delete(ctx, dra.DriverName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	runReadmeInstall(t, writeValues(t, metricsPort, fakeConfig), prom)
	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			_, _ = runHelm("uninstall", helmRelease, "--namespace", helmNamespace, "--wait", "--timeout", "2m")
		}
	})
	agentPod := waitDaemonSetPod(t, "")
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	waitAllocatable(t, 16)

	t.Run("AgentIsNotPrivileged", func(t *testing.T) {
		checkAgentSecurity(t, agentPod)
		// The NetworkPolicies (on by default) are accepted (this cluster
		// has no network plugin to enforce them): the agent's, and with DRA
		// the driver's.
		want := 1
		if c.DRA() {
			want = 2
		}
		if nps, err := cs.NetworkingV1().NetworkPolicies(helmNamespace).List(ctx, metav1.ListOptions{}); err != nil || len(nps.Items) != want {
			t.Errorf("network policies of the release: %v, %v; want %d", nps, err, want)
		}
	})
	t.Run("InClusterCredentialsOnly", func(t *testing.T) {
		if agentPod.Spec.ServiceAccountName != helmRelease+"-agent" {
			t.Errorf("agent runs as service account %q", agentPod.Spec.ServiceAccountName)
		}
		for _, e := range agentPod.Spec.Containers[0].Env {
			if e.Name == "KUBECONFIG" {
				t.Errorf("the agent has a kubeconfig: %+v", e)
			}
		}
		for _, a := range agentPod.Spec.Containers[0].Args {
			if strings.HasPrefix(a, "--kubeconfig") {
				t.Errorf("the agent has a kubeconfig: %s", a)
			}
		}
		// Its labels were written with its own token.
		waitNodeLabel(t, "gpuslice.io/slices-per-gpu", "8")
	})
	t.Run("QuotaControllerRunsAndLeads", func(t *testing.T) {
		waitDeploymentAvailable(t, helmRelease+"-quota-controller")
		deadline := time.Now().Add(60 * time.Second)
		for {
			l, err := cs.CoordinationV1().Leases(helmNamespace).Get(ctx, "gpuslice-quota-controller", metav1.GetOptions{})
			if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
				t.Logf("the chart's quota controller leads as %s", *l.Spec.HolderIdentity)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the quota controller never took its lease: %v", err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
	t.Run("Permissions", func(t *testing.T) {
		checkPermissions(t)
	})
	t.Run("DRAClaimServedByTheChart", func(t *testing.T) {
		checkChartDRA(t, metrics)
	})

	ns := newNamespace(t, "helm")
	t.Run("ReadmeExampleScheduled", func(t *testing.T) {
		p := readmeExample(t)
		p.Spec.Tolerations = []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := assignment(t, ns, p.Name); len(got) != 3 {
			t.Errorf("the README's example holds %v, want 3 slices", got)
		}
	})
	t.Run("ThrottleAndWatchdogWork", func(t *testing.T) {
		// 4 of 8 slices, strict: held to half the GPU by freezing its
		// cgroup through the agent's host mount.
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("greedy", 4, "exec /bin/workload --demand 1 --memory-mib 1024")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRunning(t, ns, "greedy")
		labels := map[string]string{"namespace": ns, "pod": "greedy", "container": "main"}
		deadline := time.Now().Add(60 * time.Second)
		for {
			mfs := promtest.Scrape(t, metrics)
			throttled, _ := value(mfs, "gpuslice_enforcement_throttled_seconds_total", labels)
			used, _ := value(mfs, "gpuslice_container_memory_used_bytes", labels)
			if throttled > 1 && used == 1<<30 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the chart's agent did not attribute and throttle the greedy pod: throttled %vs, memory %v\n%s", throttled, used, agentLogs(t))
			}
			time.Sleep(500 * time.Millisecond)
		}
		// ... from inside a private cgroup namespace, as containerd starts
		// it on a unified cgroup v2 host (the cluster's runc wrapper gives
		// the chart's agent container one).
		if logs := agentLog(t, 0); !strings.Contains(logs, "agent runs in a private cgroup namespace") {
			t.Errorf("the chart's agent did not run in a private cgroup namespace:\n%s", logs)
		}
		// 1 slice (5 GiB of an A100-40GB), 12 GiB held: killed by signal.
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("hog", 1, "exec /bin/workload --demand 0.1 --memory-mib 12288")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		failed := waitPhase(t, ns, "hog", corev1.PodFailed)
		if st := failed.Status.ContainerStatuses; len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 137 {
			t.Errorf("hog's container: %+v, want killed (exit 137)", st)
		}
	})

	t.Run("DriverTierWorks", func(t *testing.T) {
		// A driver with per-cgroup memory limits (the fake, so configured):
		// the non-privileged agent limits the container's own cgroup as runc
		// makes it, and an allocation past the limit fails inside it.
		if err := os.WriteFile(fakeConfig, append(append([]byte(nil), orig...), "driverMemoryLimits: true\n"...), 0o600); err != nil {
			t.Fatal(err)
		}
		zero := int64(0)
		if err := cs.CoreV1().Pods(helmNamespace).Delete(ctx, agentPod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		agentPod = waitDaemonSetPod(t, agentPod.UID)
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("driver-hog", 1, "exec /bin/workload --demand 0.1 --memory-mib 12288")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		failed := waitPhase(t, ns, "driver-hog", corev1.PodFailed)
		if st := failed.Status.ContainerStatuses; len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 2 {
			t.Errorf("driver-hog's container: %+v, want its own exit 2 on out-of-memory\n%s", st, agentLogs(t))
		}
		if logs := agentLog(t, 0); !strings.Contains(logs, "driver GPU memory limit set") || !strings.Contains(logs, string(failed.UID)) {
			t.Errorf("the chart's agent set no driver limit on the pod's cgroup (pod %s):\n%s", failed.UID, logs)
		}
	})

	t.Run("KubectlPluginFromKubeconfig", func(t *testing.T) {
		checkPluginFromKubeconfig(t, ns)
	})

	t.Run("UpgradeRollsTheAgent", func(t *testing.T) {
		before := assignment(t, ns, "greedy")
		greedy := map[string]string{"namespace": ns, "pod": "greedy", "container": "main"}
		limits := func() (float64, float64) {
			mfs := promtest.Scrape(t, metrics)
			compute, _ := value(mfs, "gpuslice_container_compute_limit_ratio", greedy)
			memory, _ := value(mfs, "gpuslice_container_memory_limit_bytes", greedy)
			return compute, memory
		}
		compute, memory := limits()
		if compute != 0.5 {
			t.Fatalf("before the upgrade the greedy pod's compute limit is %v, want 0.5 (4 of 8 slices)", compute)
		}
		helm(t, "upgrade", helmRelease, "deployments/helm/gpuslice", "--namespace", helmNamespace, "--reuse-values",
			"--set", "slicing.slicesPerGPU=4", "--wait", "--timeout", "3m")
		newPod := waitDaemonSetPod(t, agentPod.UID)
		if newPod.UID == agentPod.UID {
			t.Fatal("helm upgrade did not replace the agent's pod")
		}
		// Capacity follows the new layout; pods that run keep what they
		// were given.
		waitAllocatable(t, 8)
		waitNodeLabel(t, "gpuslice.io/slices-per-gpu", "4")
		if p := waitRunning(t, ns, "greedy"); len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("the greedy pod restarted across the upgrade: %+v", p.Status.ContainerStatuses)
		}
		if after := assignment(t, ns, "greedy"); !slices.Equal(before, after) {
			t.Errorf("the greedy pod held %v before the upgrade and %v after", before, after)
		}
		// It keeps what Allocate gave it (4 of 8: half the GPU and its
		// memory), not what its slice IDs would mean in the new layout.
		deadline := time.Now().Add(30 * time.Second)
		for {
			c2, m2 := limits()
			if c2 == compute && m2 == memory {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the upgrade the greedy pod's limits are compute %v, memory %v; before %v, %v\n%s", c2, m2, compute, memory, agentLogs(t))
			}
			time.Sleep(500 * time.Millisecond)
		}
	})

	t.Run("MetricsNeedAToken", func(t *testing.T) {
		checkMetricsAuth(t, ns, metrics)
	})

	t.Run("UninstallLeavesNothing", func(t *testing.T) {
		out := helm(t, "uninstall", helmRelease, "--namespace", helmNamespace, "--wait", "--timeout", "2m")
		uninstalled = true
		t.Logf("helm uninstall: %s", strings.TrimSpace(out))
		if c.DRA() {
			// The hook deleted the driver's ResourceSlices, after the
			// driver: none is left when helm returns. (The kubelet also
			// wipes a driver's slices, 30 s after it unregisters, and only
			// on a node whose kubelet runs.)
			list, err := cs.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.driver=" + dra.DriverName})
			if err != nil || len(list.Items) != 0 {
				t.Errorf("the DRA driver's ResourceSlices after uninstall: %d, %v; want none", len(list.Items), err)
			}
		}
		waitGone(t, "the agent's pods", func() (int, error) {
			pods, err := cs.CoreV1().Pods(helmNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + helmRelease})
			if err != nil {
				return 0, err
			}
			return len(pods.Items), nil
		})
		if out, err := exec.Command("nsenter", "--mount="+c.MountNS, "--", "ls", "/var/lib/kubelet/device-plugins").CombinedOutput(); err != nil || strings.Contains(string(out), "gpuslice") {
			t.Errorf("the device-plugin directory after uninstall: %v %s", err, out)
		}
		waitGone(t, "gpuslice labels on the node", func() (int, error) {
			n, err := cs.CoreV1().Nodes().Get(ctx, cluster.NodeName, metav1.GetOptions{})
			if err != nil {
				return 0, err
			}
			left := 0
			for k := range n.Labels {
				if strings.HasPrefix(k, "gpuslice.io/") {
					left++
				}
			}
			return left, nil
		})
		if frozen := frozenCgroups(t); len(frozen) > 0 {
			t.Errorf("cgroups left frozen after uninstall: %v", frozen)
		}
	})
}

// checkMetricsAuth turns on the chart's metrics.auth.mode=kubernetes with
// one reader, and scrapes the upgraded agent as nobody, as another
// service account and as the reader: 401, 403, then the metrics. The
// agent asks the API server (TokenReview, SubjectAccessReview) with its
// own account.
func checkMetricsAuth(t *testing.T, ns, metrics string) {
	t.Helper()
	cs := c.API.Clientset(t)
	ctx := context.Background()
	token := func(name string) string {
		t.Helper()
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	reader, stranger := token("reader"), token("stranger")
	helm(t, "upgrade", helmRelease, "deployments/helm/gpuslice", "--namespace", helmNamespace, "--reuse-values",
		"--set", "metrics.auth.mode=kubernetes,metrics.auth.readers[0].name=reader,metrics.auth.readers[0].namespace="+ns, "--wait", "--timeout", "3m")
	get := func(bearer string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, metrics, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(body)
	}
	// The upgraded pod answers once it is ready; the old one answered 200
	// to anyone, so wait for the new one's 401.
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := get("")
		if code == http.StatusUnauthorized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics without a token: %d, want 401\n%.300s\n%s", code, body, agentLogs(t))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if code, body := get(stranger); code != http.StatusForbidden {
		t.Errorf("/metrics as a service account that is no reader: %d, want 403\n%.300s", code, body)
	}
	if code, body := get("not-a-token"); code != http.StatusUnauthorized {
		t.Errorf("/metrics with a made-up token: %d, want 401\n%.300s", code, body)
	}
	// RBAC for the reader reaches the authorizer shortly after the upgrade.
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, body := get(reader)
		if code == http.StatusOK && strings.Contains(body, "gpuslice_container_slices") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics as the reader: %d, want 200 with the metrics\n%.300s", code, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkPluginFromKubeconfig runs kubectl gpuslice through the real
// kubectl with nothing but a kubeconfig: it finds the chart's agent pod
// and reads its metrics through the API server's proxy.
func checkPluginFromKubeconfig(t *testing.T, ns string) {
	t.Helper()
	run := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(apiserver.BinDir(), "kubectl"), args...)
		env := []string{"PATH=" + filepath.Dir(pluginBin) + ":" + os.Getenv("PATH"), "KUBECONFIG=" + c.API.Kubeconfig, "HOME=" + t.TempDir()}
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, "GPUSLICE_") && !strings.HasPrefix(e, "PATH=") && !strings.HasPrefix(e, "KUBECONFIG=") && !strings.HasPrefix(e, "HOME=") {
				env = append(env, e)
			}
		}
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	var list struct {
		Items []struct {
			Namespace, Pod, Node string
			Slices               int
		} `json:"items"`
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := run("gpuslice", "top", "pods", "-A", "-o", "json", "--context", "test")
		list.Items = nil
		if err == nil {
			if jerr := json.Unmarshal([]byte(out), &list); jerr != nil {
				t.Fatalf("kubectl gpuslice top pods -A -o json: %v\n%s", jerr, out)
			}
		}
		found := false
		for _, it := range list.Items {
			found = found || (it.Namespace == ns && it.Pod == "greedy" && it.Slices == 4 && it.Node == cluster.NodeName)
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl gpuslice top pods -A -o json never showed %s/greedy with 4 slices on %s: %v\n%s", ns, cluster.NodeName, err, out)
		}
		time.Sleep(time.Second)
	}
	out, err := run("gpuslice", "top", "pods", "-n", ns, "-o", "wide")
	if err != nil || !strings.Contains(out, "greedy") || !strings.Contains(out, "UUID") {
		t.Errorf("kubectl gpuslice top pods -n %s -o wide: %v\n%s", ns, err, out)
	}
	t.Logf("kubectl gpuslice top pods -n %s -o wide:\n%s", ns, out)
	// Another namespace's pods are not shown without -A.
	if out, err := run("gpuslice", "top", "pods", "-n", "kube-system"); err != nil || strings.Contains(out, "greedy") {
		t.Errorf("kubectl gpuslice top pods -n kube-system: %v\n%s", err, out)
	}
	// kubectl completes the plugin's arguments through kubectl_complete-gpuslice.
	if out, err := run("__complete", "gpuslice", "describe", "node", ""); err != nil || !strings.Contains(out, cluster.NodeName) {
		t.Errorf("kubectl completion of describe node: %v\n%s", err, out)
	}
	if out, err := run("gpuslice", "top", "pods", "-o", "xml"); err == nil {
		t.Errorf("-o xml was accepted:\n%s", out)
	}
}

// runReadmeInstall runs the README's install block command by command,
// against this cluster: make image with the test's version, ctr against
// its containerd, kubectl and helm with its kubeconfig, the node's name
// and the test's Prometheus for the README's examples, and helm with the
// values this cluster needs (writeValues) added.
func runReadmeInstall(t *testing.T, values, prometheus string) {
	t.Helper()
	for _, words := range readmeInstall(t) {
		for i, w := range words {
			w = strings.ReplaceAll(w, "v0.1.0", helmTag)
			w = strings.ReplaceAll(w, "http://prometheus.monitoring:9090", prometheus)
			words[i] = strings.ReplaceAll(w, "gpu-node-1", cluster.NodeName)
		}
		t.Logf("README: %s", strings.Join(words, " "))
		var out string
		var err error
		switch words[0] {
		case "make":
			cmd := exec.Command("make", words[1:]...)
			cmd.Dir = "../.."
			// This cluster has no GPU: its image keeps the fake GPU node,
			// which the shipped image leaves out.
			cmd.Env = append(os.Environ(), "FAKE_GPU=1")
			var b []byte
			b, err = cmd.CombinedOutput()
			out = string(b)
		case "ctr":
			cmd := exec.Command("ctr", append([]string{"-a", c.ContainerdSocket()}, words[1:]...)...)
			cmd.Dir = "../.."
			var b []byte
			b, err = cmd.CombinedOutput()
			out = string(b)
		case "kubectl":
			out, err = runKubectl(words[1:]...)
		case "helm":
			out, err = runHelm(append(words[1:], "-f", values, "--timeout", "3m")...)
		default:
			t.Fatalf("the README's install block runs %q, which the test does not know how to run here", words[0])
		}
		if err != nil {
			t.Fatalf("README: %s: %v\n%s\n%s", strings.Join(words, " "), err, out, agentLogs(t))
		}
	}
}

// writeValues writes the values this cluster needs beyond the README's
// install: no pod network (host network, and the not-ready taint that a
// node without one keeps), no kube-proxy (the API server's address), the
// fake GPU (its backend, files and device nodes), and where this
// cluster's kubelet and containerd keep their files.
func writeValues(t *testing.T, metricsPort int, fakeConfig string) string {
	t.Helper()
	apiPort := strings.TrimPrefix(c.API.URL, "https://127.0.0.1:")
	controllerPort, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	var healthPorts [2]int // the agent's and the driver's, on the host
	for i := range healthPorts {
		if healthPorts[i], err = apiserver.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	notReady := []map[string]any{{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}}
	fileType, dirType := "File", "Directory"
	v := map[string]any{
		"image":       map[string]any{"pullPolicy": "Never"},
		"hostNetwork": true,
		"apiServer":   map[string]any{"host": "127.0.0.1", "port": apiPort},
		"tolerations": notReady,
		"kubeletRoot": c.KubeletRoot,
		"enforcement": map[string]any{"computePolicy": "strict"},
		"metrics":     map[string]any{"port": metricsPort, "healthPort": healthPorts[0], "sampleInterval": "500ms", "networkPolicy": map[string]any{"enabled": true}},
		"runtime":     map[string]any{"stateDirs": []string{filepath.Join(c.Dir, "containerd", "state", "io.containerd.runtime.v2.task", "k8s.io")}},
		"extraArgs":   []string{"--gpu-backend=fake", "--fake-config=" + fakeConfig, "--dev-root=" + filepath.Join(c.Dir, "dev")},
		"extraVolumes": []map[string]any{
			{"name": "fake-gpu-config", "hostPath": map[string]any{"path": fakeConfig, "type": fileType}},
			{"name": "fake-gpu-workloads", "hostPath": map[string]any{"path": c.WorkloadDir, "type": dirType}},
		},
		"extraVolumeMounts": []map[string]any{
			{"name": "fake-gpu-config", "mountPath": fakeConfig, "readOnly": true},
			{"name": "fake-gpu-workloads", "mountPath": c.WorkloadDir},
		},
		"dra": map[string]any{
			"enabled": c.DRA(), "cdiDir": c.CDIDir, "healthPort": healthPorts[1],
			"extraArgs":         []string{"--gpu-backend=fake", "--fake-config=" + fakeConfig, "--dev-root=" + filepath.Join(c.Dir, "dev")},
			"extraVolumes":      []map[string]any{{"name": "fake-gpu-config", "hostPath": map[string]any{"path": fakeConfig, "type": fileType}}},
			"extraVolumeMounts": []map[string]any{{"name": "fake-gpu-config", "mountPath": fakeConfig, "readOnly": true}},
		},
		"quotaController": map[string]any{
			"replicas": 1, "hostNetwork": true, "tolerations": notReady,
			"metricsPort": controllerPort, "image": map[string]any{"pullPolicy": "Never"},
		},
	}
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "e2e-values.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkAgentSecurity checks the running agent pod's security settings as
// the API server has them: not privileged, one capability, read-only root,
// RuntimeDefault seccomp.
func checkAgentSecurity(t *testing.T, p *corev1.Pod) {
	t.Helper()
	sc := p.Spec.Containers[0].SecurityContext
	switch {
	case sc == nil:
		t.Fatal("the agent has no securityContext")
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("the agent runs privileged")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("the agent may escalate privileges")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("the agent's root filesystem is writable")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"KILL"}):
		t.Errorf("the agent's capabilities: %+v, want drop ALL, add KILL", sc.Capabilities)
	}
	if psc := p.Spec.SecurityContext; psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("the agent pod's seccomp profile: %+v, want RuntimeDefault", psc)
	}
	// What the kernel gave the process: its effective capabilities.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", agentPID(t)))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			// CAP_KILL is bit 5.
			if strings.TrimSpace(v) != "0000000000000020" {
				t.Errorf("the agent's effective capabilities are %s, want only CAP_KILL (0000000000000020)", strings.TrimSpace(v))
			}
		}
		if v, ok := strings.CutPrefix(line, "Seccomp:"); ok && strings.TrimSpace(v) != "2" {
			t.Errorf("the agent runs without a seccomp filter (Seccomp: %s)", strings.TrimSpace(v))
		}
	}
}

// agentPID finds the chart's agent process on the host by its command line.
func agentPID(t *testing.T) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmd), "\x00")
		if len(args) > 0 && args[0] == "/gpu-agent" && slices.Contains(args, "--cgroup-root=/host/sys/fs/cgroup") {
			return pid
		}
	}
	t.Fatal("no chart-installed agent process on the host")
	return 0
}

// permission is one row of the table of what the chart's service accounts
// may and may not do.
type permission struct {
	as, verb, resource, namespace string
	allowed                       bool
}

// permissions is the table docs/labels.md documents: each account can do
// what it needs and nothing a tenant could use against another.
var permissions = []permission{
	{agentSA, "get", "nodes", "", true},
	{agentSA, "patch", "nodes", "", true},
	{agentSA, "list", "pods", "", true},
	{agentSA, "watch", "pods", "", true},
	{agentSA, "create", "events", "default", true},
	{agentSA, "delete", "nodes", "", false},
	{agentSA, "update", "nodes/status", "", false},
	{agentSA, "get", "secrets", "", false},
	{agentSA, "get", "secrets", helmNamespace, false},
	{agentSA, "create", "pods", "default", false},
	{agentSA, "delete", "pods", "default", false},
	{agentSA, "create", "pods/exec", "default", false},
	{agentSA, "get", "configmaps", "default", false},
	{agentSA, "create", "serviceaccounts/token", helmNamespace, false},
	{agentSA, "update", "daemonsets.apps", helmNamespace, false},
	{agentSA, "create", "clusterrolebindings.rbac.authorization.k8s.io", "", false},
	{agentSA, "list", "gpuquotas.gpuslice.io", "", false},
	{controllerSA, "list", "gpuquotas.gpuslice.io", "", true},
	{controllerSA, "update", "gpuquotas.gpuslice.io/status", "default", true},
	{controllerSA, "list", "pods", "", true},
	{controllerSA, "patch", "pods", "default", true},
	{controllerSA, "create", "events", "default", true},
	{controllerSA, "update", "leases.coordination.k8s.io", helmNamespace, true},
	{controllerSA, "update", "leases.coordination.k8s.io", "default", false},
	{controllerSA, "create", "pods", "default", false},
	{controllerSA, "delete", "pods", "default", false},
	{controllerSA, "get", "secrets", "", false},
	{controllerSA, "patch", "nodes", "", false},
	{controllerSA, "update", "gpuquotas.gpuslice.io", "default", false},
	{controllerSA, "create", "pods/exec", "default", false},
}

// driverPermissions are the DRA driver's rows, checked when the chart runs
// it. RBAC lets it write every ResourceSlice; the chart's
// ValidatingAdmissionPolicy narrows that to its own node's (checked with
// real requests in deployments' TestDRADriverWritesOnlyItsNodesSlices, and
// here by the driver publishing through it).
var driverPermissions = []permission{
	{driverSA, "create", "resourceslices.resource.k8s.io", "", true},
	{driverSA, "delete", "resourceslices.resource.k8s.io", "", true},
	{driverSA, "get", "resourceclaims.resource.k8s.io", "default", true},
	{driverSA, "get", "nodes", "", true},
	{driverSA, "update", "resourceclaims.resource.k8s.io", "default", false},
	{driverSA, "patch", "resourceclaims.resource.k8s.io/status", "default", true},
	{driverSA, "list", "resourceclaims.resource.k8s.io", "", false},
	{driverSA, "create", "deviceclasses.resource.k8s.io", "", false},
	{driverSA, "patch", "nodes", "", false},
	{driverSA, "list", "pods", "", false},
	{driverSA, "get", "secrets", "", false},
	{driverSA, "create", "pods/exec", "default", false},
	{driverSA, "create", "validatingadmissionpolicybindings.admissionregistration.k8s.io", "", false},
}

// checkPermissions asks the API server, through kubectl auth can-i --as,
// each row of the permission table.
func checkPermissions(t *testing.T) {
	t.Helper()
	rows := permissions
	if c.DRA() {
		rows = append(slices.Clone(rows), driverPermissions...)
	}
	for _, p := range rows {
		resource, sub, _ := strings.Cut(p.resource, "/")
		args := []string{"auth", "can-i", p.verb, resource, "--as=" + p.as}
		if sub != "" {
			args = append(args, "--subresource="+sub)
		}
		if p.namespace != "" {
			args = append(args, "--namespace", p.namespace)
		} else {
			args = append(args, "--all-namespaces")
		}
		out, _ := runKubectl(args...) // exit 1 is "no"
		got := strings.TrimSpace(out) == "yes"
		if got != p.allowed {
			t.Errorf("kubectl %s: %q, want allowed=%v", strings.Join(args, " "), strings.TrimSpace(out), p.allowed)
		}
	}
}

// waitDaemonSetPod waits for the chart's agent pod, other than the one
// with UID not, to be ready, and returns it.
func waitDaemonSetPod(t *testing.T, not types.UID) *corev1.Pod {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		pods, err := cs.CoreV1().Pods(helmNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
		if err == nil {
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.UID != not && p.DeletionTimestamp == nil && podReady(p) {
					return p
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready agent pod from the chart: %v\n%s", err, agentLogs(t))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitDeploymentAvailable waits until a Deployment of the release has all
// its replicas available.
func waitDeploymentAvailable(t *testing.T, name string) *appsv1.Deployment {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		d, err := cs.AppsV1().Deployments(helmNamespace).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && d.Spec.Replicas != nil && d.Status.AvailableReplicas == *d.Spec.Replicas {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment %s not available: %v", name, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitNodeLabel waits until the node has label key=value.
func waitNodeLabel(t *testing.T, key, value string) {
	t.Helper()
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), cluster.NodeName, metav1.GetOptions{})
		if err == nil && n.Labels[key] == value {
			return
		}
		if time.Now().After(deadline) {
			var got string
			if n != nil {
				got = n.Labels[key]
			}
			t.Fatalf("node label %s is %q, want %q: %v", key, got, value, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitGone waits until count returns 0.
func waitGone(t *testing.T, what string, count func() (int, error)) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		n, err := count()
		if err == nil && n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d left after 90s: %v", what, n, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// frozenCgroups lists the kubelet's cgroups that are frozen, in the v1
// freezer and the cgroup2 hierarchy.
func frozenCgroups(t *testing.T) []string {
	t.Helper()
	var frozen []string
	for _, root := range []string{"/sys/fs/cgroup/freezer/kubepods", "/sys/fs/cgroup/unified/kubepods"} {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return nil //nolint:nilerr // a cgroup removed while walking
			}
			switch d.Name() {
			case "freezer.state":
				if data, _ := os.ReadFile(p); strings.TrimSpace(string(data)) != "THAWED" && len(data) > 0 {
					frozen = append(frozen, filepath.Dir(p))
				}
			case "cgroup.freeze":
				if data, _ := os.ReadFile(p); strings.TrimSpace(string(data)) == "1" {
					frozen = append(frozen, filepath.Dir(p))
				}
			}
			return nil
		})
	}
	return frozen
}

// agentLogs is the tail of the chart-installed agents' container logs.
func agentLogs(t *testing.T) string {
	t.Helper()
	return agentLog(t, 6000)
}

// agentLog is the last tail bytes of each chart-installed agent's
// container log (all of it when tail is 0).
func agentLog(t *testing.T, tail int) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(c.PodLogsDir, helmNamespace+"_"+helmRelease+"-agent-*", "agent", "*.log"))
	var b strings.Builder
	for _, f := range files {
		data, _ := os.ReadFile(f)
		if tail > 0 && len(data) > tail {
			data = data[len(data)-tail:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", f, data)
	}
	return b.String()
}

// helm runs the helm that build-helm.sh builds against the cluster and
// fails the test on error.
func helm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runHelm(args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s\n%s", strings.Join(args, " "), err, out, agentLogs(t))
	}
	return out
}

func runHelm(args ...string) (string, error) {
	bin, err := exec.Command("./build-helm.sh").Output()
	if err != nil {
		return "", fmt.Errorf("build-helm.sh: %w", err)
	}
	cmd := exec.Command(strings.TrimSpace(string(bin)), args...)
	cmd.Dir = "../.." // chart paths as the README gives them
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.API.Kubeconfig, "HELM_CACHE_HOME="+filepath.Join(c.Dir, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(c.Dir, "helm", "config"), "HELM_DATA_HOME="+filepath.Join(c.Dir, "helm", "data"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// runKubectl runs the kubectl build-k8s.sh builds against the cluster.
func runKubectl(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(apiserver.BinDir(), "kubectl"), append([]string{"--kubeconfig=" + c.API.Kubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}
