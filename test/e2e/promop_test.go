package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/pkg/quota"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/e2e/cluster"
	"github.com/gpuslice/gpuslice/test/promtest"
)

// TestChartServiceMonitorAsTheOperatorRendersIt takes the chart's
// ServiceMonitor, has prometheus-operator's own config generator
// (test/e2e/promop) turn it into a Prometheus configuration, runs Debian's
// Prometheus with it against the agent through Kubernetes service
// discovery, and checks that a tenant's GPU use lands in the tenant's
// namespace and pod, through the quota controller's own query. The same
// pipeline with honorLabels removed from the ServiceMonitor must fail the
// check: the operator's target labels then overwrite the agent's.
func TestChartServiceMonitorAsTheOperatorRendersIt(t *testing.T) {
	cs := c.API.Clientset(t)
	ctx := context.Background()
	rendered := chartServiceMonitor(t)

	// A tenant's pod using its GPU slice.
	ns := newNamespace(t, "tenant")
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, withHostPID(pod("trainer", 1, "exec /bin/workload --demand 0.5 --memory-mib 256")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, "trainer")

	honored := startOperatorPrometheus(t, operatorConfig(t, rendered))
	broken := startOperatorPrometheus(t, operatorConfig(t, []byte(strings.ReplaceAll(string(rendered), "honorLabels: true", "honorLabels: false"))))

	budget := quota.Spec{Budget: &quota.Budget{GPUHours: 1, Window: quota.Duration{Duration: time.Minute}}}
	key := quota.BudgetKey(*budget.Budget)
	hours := func(promURL string) map[string]float64 {
		q, err := quota.NewQuerier(promURL)
		if err != nil {
			t.Fatal(err)
		}
		u, err := quota.Measure(ctx, q, []quota.Spec{budget}, time.Now(), 5*time.Second, quota.Series(quota.TrustLabel+`="gpuslice"`), quota.Recording{}) // what the chart's ServiceMonitor labels the agents' series with
		if err != nil {
			return nil
		}
		return u.GPUHours[key]
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := hours(honored)
		if got[ns] > 0 {
			if got["gpuslice"] > 0 {
				t.Errorf("GPU-hours charged to the agent's namespace too: %v", got)
			}
			t.Logf("through the operator's config, the quota controller charges %s: %v", ns, got)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tenant's GPU-hours never reached its namespace through the operator's config: %v", got)
		}
		time.Sleep(time.Second)
	}
	// The broken variant: the operator's labels win, the tenant is charged
	// nothing, and the agent's namespace everything.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Second) {
		got := hours(broken)
		if got[ns] > 0 {
			t.Fatalf("without honorLabels the tenant was still charged %v: the check cannot tell the broken chart apart", got)
		}
		if got["gpuslice"] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("without honorLabels nothing was charged anywhere: %v", got)
		}
	}
	q, _ := quota.NewQuerier(broken)
	v, _, err := q.Query(ctx, `count by (namespace, exported_namespace) (gpuslice_container_gpu_busy_seconds_total{pod="trainer"} or gpuslice_container_gpu_busy_seconds_total{exported_pod="trainer"})`, time.Now())
	if err == nil {
		t.Logf("without honorLabels the series read: %v", v.(model.Vector))
	}
}

// operatorSetup is what every Prometheus configured the operator's way
// needs, made once per run: the generator, built from its own module, and
// the chart's Service in its namespace with the agent as its endpoint
// (through a proxy on a routable address: the API server refuses loopback
// endpoints). They live as long as the cluster.
var operatorSetup struct {
	once   sync.Once
	promop string
	err    error
}

func setUpOperator(t *testing.T) string {
	t.Helper()
	operatorSetup.once.Do(func() {
		dir, err := os.MkdirTemp("", "gpuslice-promop")
		if err != nil {
			operatorSetup.err = err
			return
		}
		bin := filepath.Join(dir, "promop")
		if out, err := exec.Command("go", "-C", "promop", "build", "-o", bin, ".").CombinedOutput(); err != nil {
			operatorSetup.err = fmt.Errorf("build prometheus-operator's config generator: %w\n%s", err, out)
			return
		}
		operatorSetup.promop = bin
		operatorSetup.err = exposeAgent()
	})
	if operatorSetup.err != nil {
		t.Fatal(operatorSetup.err)
	}
	return operatorSetup.promop
}

// exposeAgent creates what the chart's ServiceMonitor selects: its Service
// in namespace gpuslice, with Endpoints at a proxy to the agent.
func exposeAgent() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.API.Kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx := context.Background()
	ip, port, err := proxyToAgent()
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "gpuslice"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	labels := map[string]string{"app.kubernetes.io/name": "gpuslice", "app.kubernetes.io/instance": "gpuslice", "app.kubernetes.io/component": "agent"}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "gpuslice-agent", Namespace: "gpuslice", Labels: labels},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "metrics", Port: int32(port)}}},
	}
	if _, err := cs.CoreV1().Services("gpuslice").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	ep := &corev1.Endpoints{ //nolint:staticcheck // the operator's default discovery role is endpoints
		ObjectMeta: metav1.ObjectMeta{Name: "gpuslice-agent", Namespace: "gpuslice", Labels: labels},
		Subsets: []corev1.EndpointSubset{{ //nolint:staticcheck // as above
			Addresses: []corev1.EndpointAddress{{IP: ip, NodeName: ptrTo(cluster.NodeName)}},
			Ports:     []corev1.EndpointPort{{Name: "metrics", Port: int32(port)}},
		}},
	}
	_, err = cs.CoreV1().Endpoints("gpuslice").Create(ctx, ep, metav1.CreateOptions{})
	return err
}

// chartServiceMonitor is the chart's ServiceMonitor as helm renders it,
// scraping every second.
func chartServiceMonitor(t *testing.T) []byte {
	t.Helper()
	helm, err := exec.Command("./build-helm.sh").Output()
	if err != nil {
		t.Fatalf("helm: %v", err)
	}
	rendered, err := exec.Command(strings.TrimSpace(string(helm)), "template", "gpuslice", "../../deployments/helm/gpuslice", "--namespace", "gpuslice",
		"--set", "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.interval=1s", "--show-only", "templates/monitoring.yaml").Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	if !strings.Contains(string(rendered), "honorLabels: true") {
		t.Fatalf("the chart's ServiceMonitor does not honor labels:\n%s", rendered)
	}
	return rendered
}

// startOperatorPrometheus runs Prometheus with conf on a free port.
func startOperatorPrometheus(t *testing.T, conf string) string {
	t.Helper()
	port, err := apiserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	url, _ := promtest.StartConfig(t, fmt.Sprintf("127.0.0.1:%d", port), conf)
	return url
}

// operatorConfig generates a Prometheus configuration from the
// ServiceMonitor with the operator's code, makes the two substitutions the
// operator's config-reloader makes at run time ($(SHARD), $(POD_NAME)),
// and returns it. Debian's Prometheus is built without Kubernetes
// discovery, so each kubernetes_sd_configs entry is served instead by
// endpointsSD over http_sd: the same targets and __meta_kubernetes_* labels
// Kubernetes discovery derives from the real Service and Endpoints objects.
// The operator's relabelings and honor_labels, what the tests are about,
// are left exactly as generated.
func operatorConfig(t *testing.T, serviceMonitor []byte) string {
	t.Helper()
	promop := setUpOperator(t)
	dir := t.TempDir()
	smFile := filepath.Join(dir, "servicemonitor.yaml")
	if err := os.WriteFile(smFile, serviceMonitor, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promop, "--service-monitors", smFile, "--scrape-interval", "1s").Output()
	if err != nil {
		t.Fatalf("promop: %v", err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(strings.NewReplacer("$(SHARD)", "0", "$(POD_NAME)", "prometheus-0").Replace(string(out))), &cfg); err != nil {
		t.Fatal(err)
	}
	if g, ok := cfg["global"].(map[string]any); ok && g["evaluation_interval"] == "" {
		g["evaluation_interval"] = "1s"
	}
	scrapes, _ := cfg["scrape_configs"].([]any)
	for _, sc := range scrapes {
		m := sc.(map[string]any)
		var https []any
		for _, sd := range m["kubernetes_sd_configs"].([]any) {
			k := sd.(map[string]any)
			if k["role"] != "endpoints" {
				t.Fatalf("the operator generated discovery role %v; endpointsSD serves endpoints", k["role"])
			}
			var names []string
			if ns, ok := k["namespaces"].(map[string]any); ok {
				for _, n := range ns["names"].([]any) {
					names = append(names, n.(string))
				}
			}
			https = append(https, map[string]any{"url": endpointsSD(t, names), "refresh_interval": "1s"})
		}
		delete(m, "kubernetes_sd_configs")
		m["http_sd_configs"] = https
	}
	conf, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(conf)
}

// endpointsSD serves, for Prometheus' http_sd, what its Kubernetes
// discovery with role endpoints would find in namespaces: a target per
// Endpoints address and port, labelled with the Endpoints', the port's and
// the Service's metadata.
func endpointsSD(t *testing.T, namespaces []string) string {
	t.Helper()
	cs := c.API.Clientset(t)
	sanitize := strings.NewReplacer(".", "_", "/", "_", "-", "_")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var groups []map[string]any
		for _, ns := range namespaces {
			eps, err := cs.CoreV1().Endpoints(ns).List(r.Context(), metav1.ListOptions{})
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			for _, e := range eps.Items {
				svc, err := cs.CoreV1().Services(ns).Get(r.Context(), e.Name, metav1.GetOptions{})
				if err != nil {
					continue
				}
				for _, sub := range e.Subsets {
					for _, a := range sub.Addresses {
						for _, p := range sub.Ports {
							l := map[string]string{
								"__meta_kubernetes_namespace":              ns,
								"__meta_kubernetes_endpoints_name":         e.Name,
								"__meta_kubernetes_service_name":           svc.Name,
								"__meta_kubernetes_endpoint_port_name":     p.Name,
								"__meta_kubernetes_endpoint_port_protocol": string(p.Protocol),
								"__meta_kubernetes_endpoint_ready":         "true",
							}
							if a.NodeName != nil {
								l["__meta_kubernetes_endpoint_node_name"] = *a.NodeName
							}
							for k, v := range svc.Labels {
								l["__meta_kubernetes_service_label_"+sanitize.Replace(k)] = v
								l["__meta_kubernetes_service_labelpresent_"+sanitize.Replace(k)] = "true"
							}
							groups = append(groups, map[string]any{"targets": []string{net.JoinHostPort(a.IP, strconv.Itoa(int(p.Port)))}, "labels": l})
						}
					}
				}
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(groups)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// proxyToAgent forwards connections on a routable address of this machine
// to the agent's loopback metrics address, for as long as the tests run,
// and returns that address.
func proxyToAgent() (string, int, error) {
	ip := ""
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			ip = n.IP.String()
			break
		}
	}
	if ip == "" {
		return "", 0, errors.New("no routable IPv4 address on this machine for the agent's endpoint")
	}
	lis, err := net.Listen("tcp", ip+":0")
	if err != nil {
		return "", 0, err
	}
	go func() {
		for {
			in, err := lis.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			go func() {
				defer func() { _ = in.Close() }()
				outc, err := net.Dial("tcp", c.MetricsAddr)
				if err != nil {
					return
				}
				defer func() { _ = outc.Close() }()
				go func() { _, _ = io.Copy(outc, in) }()
				_, _ = io.Copy(in, outc)
			}()
		}
	}()
	return ip, lis.Addr().(*net.TCPAddr).Port, nil
}

func ptrTo[T any](v T) *T { return &v }
