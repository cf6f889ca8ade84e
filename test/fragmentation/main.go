// Command fragmentation runs a seeded stream of GPU pods through the real
// kube-scheduler, once per placement path, and reports how each path
// fragments GPUs: pods that straddled GPUs, admission failures, pods left
// Pending while one GPU had room for them, and slice utilisation at
// saturation.
//
// The nodes are simulated: Node objects (and, for DRA, the ResourceSlices
// gpu-dra-driver would publish for them) whose "kubelet" is this program.
// It admits each pod bound to a node the way the node's agent would: the
// device plugin's placement (pkg/vgpu, binpack, --span) for nvidia.com/vgpu,
// or the scheduler's own DRA allocation for claims. The scheduler, the API
// server and, on its path, gpu-scheduler-extender are the real binaries.
//
// Run it with make fragmentation; it needs test/e2e/build-k8s.sh's
// binaries (etcd, kube-apiserver, kube-scheduler).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

// path is one way pods get slices.
type path struct {
	name     string
	span     string // device plugin's --span
	extender bool
	dra      string // "", "claims" or "mapping"
}

var paths = []path{
	{name: "device plugin, --span=fewest", span: contract.SpanFewest},
	{name: "device plugin, --span=never", span: contract.SpanNever},
	{name: "device plugin + gpu-scheduler-extender", span: contract.SpanFewest, extender: true},
	{name: "DRA claims on consumable capacity", dra: "claims"},
	{name: "DRA extended-resource mapping", dra: "mapping"},
}

// config is the experiment's shape.
type config struct {
	seed                uint64
	nodes, gpus, slices int
	pods                int
	rate                float64       // arrivals a second
	lifetime            time.Duration // mean run time
	limit               time.Duration // per path
	extenderBin, only   string
	verbose             bool
}

// sizes is the mix of requests: slices and weight.
var sizes = []struct{ slices, weight int }{{1, 30}, {2, 25}, {3, 10}, {4, 20}, {6, 5}, {8, 10}}

// arrival is one pod of the stream.
type arrival struct {
	at       time.Duration
	slices   int
	lifetime time.Duration
}

func stream(c config) []arrival {
	rng := rand.New(rand.NewPCG(c.seed, c.seed^0x9e3779b97f4a7c15)) //nolint:gosec // a seeded stream, reproducible on purpose
	total := 0
	for _, s := range sizes {
		total += s.weight
	}
	out := make([]arrival, c.pods)
	var at time.Duration
	for i := range out {
		at += time.Duration(rng.ExpFloat64() / c.rate * float64(time.Second))
		w := rng.IntN(total)
		slices := 0
		for _, s := range sizes {
			if w < s.weight {
				slices = s.slices
				break
			}
			w -= s.weight
		}
		out[i] = arrival{at: at, slices: slices, lifetime: time.Duration(rng.ExpFloat64() * float64(c.lifetime))}
	}
	return out
}

func main() {
	var c config
	flag.Uint64Var(&c.seed, "seed", 1, "the stream's seed")
	flag.IntVar(&c.nodes, "nodes", 4, "simulated nodes")
	flag.IntVar(&c.gpus, "gpus", 8, "GPUs per node")
	flag.IntVar(&c.slices, "slices", 8, "slices per GPU")
	flag.IntVar(&c.pods, "pods", 300, "pods in the stream")
	flag.Float64Var(&c.rate, "rate", 10, "pod arrivals a second")
	flag.DurationVar(&c.lifetime, "lifetime", 10*time.Second, "mean run time of a pod")
	flag.DurationVar(&c.limit, "limit", 3*time.Minute, "longest run of one path")
	flag.StringVar(&c.extenderBin, "extender", "", "gpu-scheduler-extender binary (built when empty)")
	flag.StringVar(&c.only, "only", "", "run only the paths whose name contains this")
	flag.BoolVar(&c.verbose, "v", false, "log progress")
	flag.Parse()
	// Interrupted: each path's cluster is stopped on the way out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	_, err := run(ctx, c, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fragmentation:", err)
		os.Exit(1)
	}
}

// selected reports whether a path runs: c.only is a comma-separated list
// of parts of path names.
func (c config) selected(p path) bool {
	if c.only == "" {
		return true
	}
	for _, part := range strings.Split(c.only, ",") {
		if strings.Contains(p.name, part) {
			return true
		}
	}
	return false
}

func run(ctx context.Context, c config, w io.Writer) ([]result, error) {
	if missing := apiserver.Missing("etcd", "kube-apiserver", "kube-scheduler"); len(missing) > 0 {
		return nil, fmt.Errorf("%v not built: run test/e2e/build-k8s.sh", missing)
	}
	dir, err := os.MkdirTemp("", "gpuslice-fragmentation-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if c.extenderBin == "" {
		c.extenderBin = filepath.Join(dir, "gpu-scheduler-extender")
		if out, err := exec.Command("go", "build", "-o", c.extenderBin, "github.com/gpuslice/gpuslice/cmd/gpu-scheduler-extender").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build the extender: %w: %s", err, out)
		}
	}
	arrivals := stream(c)
	var results []result
	for i, p := range paths {
		if !c.selected(p) {
			continue
		}
		r, err := runPath(ctx, c, p, arrivals, filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		results = append(results, r)
		fmt.Fprintf(os.Stderr, "%s: done in %s\n", p.name, r.took.Round(time.Second))
	}
	commit, _ := exec.Command("git", "describe", "--always", "--dirty").Output()
	fmt.Fprintf(w, "Run %s, commit `%s`, %d CPUs.\n", time.Now().UTC().Format("2006-01-02"), strings.TrimSpace(string(commit)), runtime.NumCPU())
	fmt.Fprintf(w, "Seed %d: %d pods (slices 1:30%% 2:25%% 3:10%% 4:20%% 6:5%% 8:10%%), %.0f a second, mean run %s; %d nodes of %d GPUs of %d slices; kube-scheduler %s.\n\n",
		c.seed, c.pods, c.rate, c.lifetime, c.nodes, c.gpus, c.slices, apiserver.Version())
	fmt.Fprintln(w, "| path | straddled GPUs | admission failures | Pending 11 s or more while one GPU had room | slice utilisation while pods wait | ran |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range results {
		util := "no pod waited"
		if r.utilisation >= 0 {
			util = fmt.Sprintf("%.1f %%", 100*r.utilisation)
		}
		fmt.Fprintf(w, "| %s | %d | %d | %d | %s | %d |\n", r.path, r.straddled, r.failed, r.pendingWithRoom, util, r.ran)
	}
	return results, nil
}

// result is one path's outcome.
type result struct {
	path                                    string
	straddled, failed, pendingWithRoom, ran int
	utilisation                             float64 // -1: no pod waited
	took                                    time.Duration
}

// sim is one path's run: the cluster, the simulated kubelets and what they
// saw.
type sim struct {
	c     config
	p     path
	cs    kubernetes.Interface
	start time.Time

	mu        sync.Mutex
	nodes     map[string]*simNode
	sizes     map[string]int       // pod name -> slices asked
	handled   map[string]bool      // pods admitted or refused
	ends      map[string]time.Time // running pods -> when they end
	claims    map[string]string    // pod -> its claim (DRA)
	roomSince map[string]time.Time // Pending pods -> since when some GPU had room for them, without a break
	pendSeen  map[string]bool      // pods Pending for roomWait while one GPU had room
	res       result
	used      []float64 // sampled utilisation while saturated
}

// simNode is one node's GPUs as its kubelet and agent see them
// (device-plugin paths): slice IDs held, by pod.
type simNode struct {
	name   string
	layout *vgpu.Layout
	held   map[string][]string // pod -> slice IDs
	uids   map[string]string   // pod -> UID
	queue  chan *corev1.Pod
}

func runPath(parent context.Context, c config, p path, arrivals []arrival, dir string) (result, error) {
	api, err := apiserver.Launch(dir, apiserver.Options{})
	if err != nil {
		return result{}, err
	}
	defer api.Stop()
	rc, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		return result{}, err
	}
	rc.QPS, rc.Burst = 200, 400
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return result{}, err
	}
	s := &sim{c: c, p: p, cs: cs, nodes: map[string]*simNode{}, sizes: map[string]int{}, handled: map[string]bool{},
		ends: map[string]time.Time{}, claims: map[string]string{}, roomSince: map[string]time.Time{}, pendSeen: map[string]bool{}, res: result{path: p.name}}
	ctx, cancel := context.WithTimeout(parent, c.limit)
	defer cancel()
	if err := s.setup(ctx); err != nil {
		return result{}, err
	}
	stop, err := s.startScheduler(dir, api)
	if err != nil {
		return result{}, err
	}
	defer stop()
	s.watch(ctx)
	s.start = time.Now()
	go s.sample(ctx)
	go s.departures(ctx)
	for i, a := range arrivals {
		if d := time.Until(s.start.Add(a.at)); d > 0 {
			select {
			case <-ctx.Done():
				return result{}, fmt.Errorf("arrivals not done in %s", c.limit)
			case <-time.After(d):
			}
		}
		if err := s.create(ctx, i, a); err != nil {
			return result{}, err
		}
	}
	// Drain: until every pod ran (or failed) and ended.
	for {
		s.mu.Lock()
		done := len(s.handled) == len(arrivals) && len(s.ends) == 0
		s.mu.Unlock()
		if done {
			break
		}
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return result{}, parent.Err()
			}
			s.mu.Lock()
			s.res.failed += len(arrivals) - len(s.handled) // never placed
			s.mu.Unlock()
			fmt.Fprintf(os.Stderr, "%s: %d pods never placed in %s\n", p.name, len(arrivals)-len(s.handled), c.limit)
			return s.finish(), nil
		case <-time.After(200 * time.Millisecond):
		}
	}
	return s.finish(), nil
}

func (s *sim) finish() result {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.res
	r.pendingWithRoom = len(s.pendSeen)
	r.utilisation = -1
	if len(s.used) > 0 {
		sum := 0.0
		for _, u := range s.used {
			sum += u
		}
		r.utilisation = sum / float64(len(s.used))
	}
	r.took = time.Since(s.start)
	return r
}

func (s *sim) logf(f string, a ...any) {
	if s.c.verbose {
		fmt.Fprintf(os.Stderr, "%6.1fs %s: "+f+"\n", append([]any{time.Since(s.start).Seconds(), s.p.name}, a...)...)
	}
}

// setup creates the nodes (and, for DRA, the classes and each node's
// ResourceSlices).
func (s *sim) setup(ctx context.Context) error {
	fake, err := fakegpu.New(fakegpu.PresetConfig("H100-80GB", s.c.gpus))
	if err != nil {
		return err
	}
	devs, err := fake.Devices()
	if err != nil {
		return err
	}
	sys, _ := fake.System()
	gpus := make([]vgpu.GPU, len(devs))
	for i, d := range devs {
		gpus[i] = vgpu.GPU{UUID: d.UUID, Index: d.Index, Model: d.Model, MemoryBytes: d.MemoryBytes}
	}
	layout, err := vgpu.NewLayout(gpus, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: s.c.slices}})
	if err != nil {
		return err
	}
	if s.p.dra != "" {
		if err := s.classes(ctx); err != nil {
			return err
		}
	}
	for i := range s.c.nodes {
		name := fmt.Sprintf("sim-%d", i)
		if err := s.node(ctx, name); err != nil {
			return err
		}
		n := &simNode{name: name, layout: layout, held: map[string][]string{}, uids: map[string]string{}, queue: make(chan *corev1.Pod, 1024)}
		s.nodes[name] = n
		if s.p.dra != "" {
			if err := s.publishSlices(ctx, name, layout, devs, sys); err != nil {
				return err
			}
		} else {
			s.publish(ctx, n)
			go s.kubelet(ctx, n)
		}
	}
	return nil
}

func (s *sim) node(ctx context.Context, name string) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
	if _, err := s.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return err
	}
	slices := int64(0)
	if s.p.dra == "" {
		slices = int64(s.c.gpus * s.c.slices)
	}
	list := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("256"), corev1.ResourceMemory: resource.MustParse("2Ti"),
		corev1.ResourcePods: resource.MustParse("1000"), contract.ResourceName: *resource.NewQuantity(slices, resource.DecimalSI),
	}
	node.Status = corev1.NodeStatus{Capacity: list, Allocatable: list,
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}}
	_, err := s.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

// classes are the chart's DeviceClasses.
func (s *sim) classes(ctx context.Context) error {
	gpu := &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: "gpu.gpuslice.io"}, Spec: resourceapi.DeviceClassSpec{
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: `device.driver == "gpu.gpuslice.io" && device.attributes["gpu.gpuslice.io"].kind == "gpu"`}}}}}
	if _, err := s.cs.ResourceV1().DeviceClasses().Create(ctx, gpu, metav1.CreateOptions{}); err != nil {
		return err
	}
	if s.p.dra != "mapping" {
		return nil
	}
	name := contract.ResourceName
	vg := &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: "vgpu.gpuslice.io"}, Spec: resourceapi.DeviceClassSpec{
		ExtendedResourceName: &name,
		Selectors:            []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: `device.driver == "gpu.gpuslice.io" && device.attributes["gpu.gpuslice.io"].kind == "slice"`}}}}}
	_, err := s.cs.ResourceV1().DeviceClasses().Create(ctx, vg, metav1.CreateOptions{})
	return err
}

// publishSlices publishes a node's devices as gpu-dra-driver does: the
// shared GPU devices, and with the mapping the slice devices and their
// counter sets.
func (s *sim) publishSlices(ctx context.Context, node string, layout *vgpu.Layout, devs []nvml.Device, sys nvml.SystemInfo) error {
	devices, err := dra.Devices(layout, devs, sys)
	if err != nil {
		return err
	}
	var counterSlices [][]resourceapi.CounterSet
	if s.p.dra == "mapping" {
		var sets []resourceapi.CounterSet
		devices, sets = dra.WithSliceDevices(devices)
		counterSlices = dra.CounterSlices(sets)
	}
	deviceSlices := dra.Slices(devices)
	count := int64(len(deviceSlices) + len(counterSlices))
	spec := func() resourceapi.ResourceSliceSpec {
		nodeName := node
		return resourceapi.ResourceSliceSpec{Driver: contract.DRADriverName, NodeName: &nodeName,
			Pool: resourceapi.ResourcePool{Name: node, Generation: 1, ResourceSliceCount: count}}
	}
	i := 0
	for _, sets := range counterSlices {
		sp := spec()
		sp.SharedCounters = sets
		if err := s.createSlice(ctx, fmt.Sprintf("%s-%d", node, i), sp); err != nil {
			return err
		}
		i++
	}
	for _, ds := range deviceSlices {
		sp := spec()
		sp.Devices = ds
		if err := s.createSlice(ctx, fmt.Sprintf("%s-%d", node, i), sp); err != nil {
			return err
		}
		i++
	}
	return nil
}

func (s *sim) createSlice(ctx context.Context, name string, spec resourceapi.ResourceSliceSpec) error {
	_, err := s.cs.ResourceV1().ResourceSlices().Create(ctx, &resourceapi.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{})
	return err
}

// startScheduler starts kube-scheduler (with the extender on its path).
func (s *sim) startScheduler(dir string, api *apiserver.Server) (func(), error) {
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	extenders := ""
	if s.p.extender {
		port, err := apiserver.FreePort()
		if err != nil {
			return stop, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		ext, err := apiserver.StartProcess("gpu-scheduler-extender", s.c.extenderBin, "--kubeconfig="+api.Kubeconfig, "--listen-address="+addr)
		if err != nil {
			return stop, err
		}
		stops = append(stops, ext.Stop)
		if err := waitReady("http://" + addr + "/readyz"); err != nil {
			return stop, err
		}
		extenders = fmt.Sprintf(`extenders:
- urlPrefix: http://%s
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: 5
  nodeCacheCapable: true
  managedResources:
  - name: %s
    ignoredByScheduler: false
`, addr, contract.ResourceName)
	}
	cfg := filepath.Join(dir, "scheduler.yaml")
	body := fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %s
  qps: 200
  burst: 400
leaderElection:
  leaderElect: false
%s`, api.Kubeconfig, extenders)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		return stop, err
	}
	port, err := apiserver.FreePort()
	if err != nil {
		return stop, err
	}
	sched, err := apiserver.StartProcess("kube-scheduler", filepath.Join(apiserver.BinDir(), "kube-scheduler"), "--config="+cfg,
		"--authentication-kubeconfig="+api.Kubeconfig, "--authorization-kubeconfig="+api.Kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port), "--v=0")
	if err != nil {
		return stop, err
	}
	stops = append(stops, sched.Stop)
	return stop, nil
}

func waitReady(url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil { //nolint:gosec,noctx // a loopback URL the program built
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready in 30s", url)
}

// create makes pod i (and its claim on the claims path).
func (s *sim) create(ctx context.Context, i int, a arrival) error {
	name := fmt.Sprintf("p-%04d", i)
	zero := int64(0)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: map[string]string{"lifetime": a.lifetime.String()}},
		// The nodes keep the not-ready taint the API server gives a new
		// node: no controller manager runs to lift it.
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &zero, Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}, Containers: []corev1.Container{{Name: "main", Image: "none"}}}}
	switch s.p.dra {
	case "claims":
		claim := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: "gpu.gpuslice.io",
				Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
					contract.DRACapacityCompute: *resource.NewQuantity(int64(a.slices), resource.DecimalSI)}}}}}}}}
		if _, err := s.cs.ResourceV1().ResourceClaims("default").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
			return err
		}
		pod.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: &name}}
		pod.Spec.Containers[0].Resources.Claims = []corev1.ResourceClaim{{Name: "gpu"}}
	default:
		q := *resource.NewQuantity(int64(a.slices), resource.DecimalSI)
		pod.Spec.Containers[0].Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{contract.ResourceName: q}, Requests: corev1.ResourceList{contract.ResourceName: q}}
	}
	s.mu.Lock()
	s.sizes[name] = a.slices
	s.mu.Unlock()
	_, err := s.cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	return err
}

// watch hands each pod bound to a node to that node's kubelet once.
func (s *sim) watch(ctx context.Context) {
	f := informers.NewSharedInformerFactoryWithOptions(s.cs, 0, informers.WithNamespace("default"))
	inf := f.Core().V1().Pods().Informer()
	handle := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.NodeName == "" || pod.Status.Phase != corev1.PodPending {
			return
		}
		s.mu.Lock()
		seen := s.handled[pod.Name]
		s.handled[pod.Name] = true
		s.mu.Unlock()
		if seen {
			return
		}
		if s.p.dra != "" {
			go s.admitDRA(ctx, pod)
			return
		}
		s.nodes[pod.Spec.NodeName].queue <- pod
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: handle, UpdateFunc: func(_, o any) { handle(o) }})
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
}

// kubelet admits a node's pods one at a time, as the kubelet does, with
// the device plugin's placement.
func (s *sim) kubelet(ctx context.Context, n *simNode) {
	for {
		var pod *corev1.Pod
		select {
		case <-ctx.Done():
			return
		case pod = <-n.queue:
		}
		s.mu.Lock()
		size := s.sizes[pod.Name]
		var avail []string
		taken := map[string]bool{}
		for _, ids := range n.held {
			for _, id := range ids {
				taken[id] = true
			}
		}
		for _, id := range n.layout.SliceIDs() {
			if !taken[id.String()] {
				avail = append(avail, id.String())
			}
		}
		ids, err := n.layout.Place(vgpu.Request{Available: avail, Size: size}, vgpu.Binpack, nil)
		spans := err == nil && gpuCount(ids) > 1
		if err != nil || (spans && s.p.span == contract.SpanNever) {
			s.res.failed++
			s.mu.Unlock()
			s.logf("%s refused on %s (%d slices)", pod.Name, n.name, size)
			s.fail(ctx, pod)
			continue
		}
		if spans {
			s.res.straddled++
		}
		s.res.ran++
		n.held[pod.Name] = ids
		n.uids[pod.Name] = string(pod.UID)
		s.ends[pod.Name] = time.Now().Add(lifetime(pod))
		s.mu.Unlock()
		s.publish(ctx, n)
		s.running(ctx, pod)
	}
}

func gpuCount(ids []string) int {
	g := map[string]bool{}
	for _, id := range ids {
		if sid, err := vgpu.ParseSliceID(id); err == nil {
			g[sid.UUID] = true
		}
	}
	return len(g)
}

func lifetime(pod *corev1.Pod) time.Duration {
	d, _ := time.ParseDuration(pod.Annotations["lifetime"])
	return d
}

// publish writes a node's free slices per GPU as its agent would, for the
// extender.
func (s *sim) publish(ctx context.Context, n *simNode) {
	if !s.p.extender {
		return
	}
	s.mu.Lock()
	ns := contract.NodeSlices{Version: contract.NodeSlicesVersion, Resource: contract.ResourceName, Span: s.p.span, Holders: []string{}}
	free := map[string]int{}
	for _, g := range n.layout.GPUs() {
		free[g.UUID] = g.Slices
	}
	for pod, ids := range n.held {
		for _, id := range ids {
			sid, _ := vgpu.ParseSliceID(id)
			free[sid.UUID]--
		}
		ns.Holders = append(ns.Holders, contract.HolderKey(n.uids[pod], "main"))
	}
	for _, g := range n.layout.GPUs() {
		ns.GPUs = append(ns.GPUs, contract.GPUFree{UUID: g.UUID, Index: g.Index, Slices: g.Slices, Free: free[g.UUID]})
	}
	sort.Strings(ns.Holders)
	s.mu.Unlock()
	v, err := ns.Marshal()
	if err != nil {
		fmt.Fprintln(os.Stderr, "publish:", err)
		return
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, contract.NodeSlicesAnnotation, v)
	if _, err := s.cs.CoreV1().Nodes().Patch(ctx, n.name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "publish:", err)
	}
}

// admitDRA admits a pod on a DRA path: the scheduler allocated its claim;
// the pod straddles when its devices are on more than one GPU.
func (s *sim) admitDRA(ctx context.Context, pod *corev1.Pod) {
	claim := ""
	if s.p.dra == "claims" {
		claim = pod.Name
	} else if pod.Status.ExtendedResourceClaimStatus != nil {
		claim = pod.Status.ExtendedResourceClaimStatus.ResourceClaimName
	}
	if claim == "" {
		// The extended resource's claim name comes with the binding.
		p, err := s.cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil && p.Status.ExtendedResourceClaimStatus != nil {
			claim = p.Status.ExtendedResourceClaimStatus.ResourceClaimName
		}
	}
	c, err := s.cs.ResourceV1().ResourceClaims("default").Get(ctx, claim, metav1.GetOptions{})
	if err != nil || c.Status.Allocation == nil {
		s.mu.Lock()
		s.res.failed++
		s.mu.Unlock()
		s.logf("%s: claim %q not allocated: %v", pod.Name, claim, err)
		s.fail(ctx, pod)
		return
	}
	gpus := map[string]bool{}
	for _, r := range c.Status.Allocation.Devices.Results {
		gpus[gpuOfDevice(r.Pool, r.Device)] = true
	}
	s.mu.Lock()
	if len(gpus) > 1 {
		s.res.straddled++
	}
	s.res.ran++
	s.claims[pod.Name] = claim
	s.ends[pod.Name] = time.Now().Add(lifetime(pod))
	s.mu.Unlock()
	s.running(ctx, pod)
}

// gpuOfDevice names the GPU a device is (gpu-<i>) or is a slice of
// (gpu-<i>-slice-<j>), in its pool (node).
func gpuOfDevice(pool, device string) string {
	if i := strings.Index(device, "-slice-"); i >= 0 {
		device = device[:i]
	}
	return pool + "/" + device
}

func (s *sim) running(ctx context.Context, pod *corev1.Pod) {
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue})
	if _, err := s.cs.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
		s.logf("%s: set Running: %v", pod.Name, err)
	}
}

// fail ends a refused pod as the kubelet does, then deletes it (nothing
// recreates it: a failure here is one pod).
func (s *sim) fail(ctx context.Context, pod *corev1.Pod) {
	p := pod.DeepCopy()
	p.Status.Phase, p.Status.Reason = corev1.PodFailed, "UnexpectedAdmissionError"
	_, _ = s.cs.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{})
	_ = s.cs.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{})
}

// departures deletes each running pod when its run ends, freeing what it
// held (on DRA paths, deallocating its claim as the controller manager
// would, which this cluster does not run).
func (s *sim) departures(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		now := time.Now()
		var due []string
		s.mu.Lock()
		for pod, end := range s.ends {
			if now.After(end) {
				due = append(due, pod)
			}
		}
		s.mu.Unlock()
		for _, pod := range due {
			_ = s.cs.CoreV1().Pods("default").Delete(ctx, pod, metav1.DeleteOptions{})
			s.mu.Lock()
			claim := s.claims[pod]
			var node *simNode
			for _, n := range s.nodes {
				if _, ok := n.held[pod]; ok {
					node = n
					delete(n.held, pod)
					delete(n.uids, pod)
				}
			}
			delete(s.ends, pod)
			s.mu.Unlock()
			if claim != "" {
				s.release(ctx, claim)
			}
			if node != nil {
				s.publish(ctx, node)
			}
		}
	}
}

// release deallocates and deletes a claim.
func (s *sim) release(ctx context.Context, name string) {
	claims := s.cs.ResourceV1().ResourceClaims("default")
	for range 5 {
		c, err := claims.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return
		}
		c.Status = resourceapi.ResourceClaimStatus{}
		if c, err = claims.UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
			continue
		}
		c.Finalizers = nil
		if _, err = claims.Update(ctx, c, metav1.UpdateOptions{}); err != nil {
			continue
		}
		_ = claims.Delete(ctx, name, metav1.DeleteOptions{})
		return
	}
}

// roomWait is how long a pod must stay Pending while some GPU has room for
// it, without a break, to count: longer than the scheduler's longest
// backoff (podMaxBackoffSeconds, 10 s), so that a pod waiting out a
// backoff after an earlier refusal does not count.
const roomWait = 11 * time.Second

// sample records, every half second, the slices in use while pods wait,
// and the pods Pending for roomWait while some GPU had room for them.
func (s *sim) sample(ctx context.Context) {
	total := float64(s.c.nodes * s.c.gpus * s.c.slices)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		free, err := s.freeByGPU(ctx)
		if err != nil {
			continue
		}
		pods, err := s.cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		maxFree, sumFree := 0, 0
		for _, f := range free {
			maxFree = max(maxFree, f)
			sumFree += f
		}
		saturated := false
		now := time.Now()
		s.mu.Lock()
		pending := map[string]bool{}
		for _, p := range pods.Items {
			if p.Spec.NodeName != "" || now.Sub(p.CreationTimestamp.Time) < 2*time.Second {
				continue
			}
			saturated = true
			if s.sizes[p.Name] > maxFree {
				continue
			}
			pending[p.Name] = true
			since, ok := s.roomSince[p.Name]
			if !ok {
				s.roomSince[p.Name] = now
			} else if now.Sub(since) >= roomWait {
				s.pendSeen[p.Name] = true
			}
		}
		for name := range s.roomSince {
			if !pending[name] {
				delete(s.roomSince, name)
			}
		}
		if saturated {
			s.used = append(s.used, 1-float64(sumFree)/total)
		}
		s.mu.Unlock()
	}
}

// freeByGPU is each GPU's free slices: the simulated kubelets' for the
// device plugin, the claims' allocations for DRA.
func (s *sim) freeByGPU(ctx context.Context) (map[string]int, error) {
	free := map[string]int{}
	if s.p.dra == "" {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, n := range s.nodes {
			for _, g := range n.layout.GPUs() {
				free[n.name+"/"+g.UUID] = g.Slices
			}
			for _, ids := range n.held {
				for _, id := range ids {
					sid, _ := vgpu.ParseSliceID(id)
					free[n.name+"/"+sid.UUID]--
				}
			}
		}
		return free, nil
	}
	for n := range s.nodes {
		for i := range s.c.gpus {
			free[gpuOfDevice(n, dra.DeviceName(i))] = s.c.slices
		}
	}
	claims, err := s.cs.ResourceV1().ResourceClaims("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	shared := map[string]bool{}
	sliced := map[string]bool{}
	for _, c := range claims.Items {
		if c.Status.Allocation == nil {
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			g := gpuOfDevice(r.Pool, r.Device)
			if strings.Contains(r.Device, "-slice-") {
				free[g]--
				sliced[g] = true
				continue
			}
			shared[g] = true
			if q, ok := r.ConsumedCapacity[contract.DRACapacityCompute]; ok {
				free[g] -= int(q.Value())
			}
		}
	}
	// A GPU serves shares or slices, never both.
	for g := range free {
		if shared[g] && sliced[g] {
			free[g] = 0
		}
	}
	return free, nil
}
