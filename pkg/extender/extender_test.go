package extender_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/extender"
)

const vgpu = "nvidia.com/vgpu"

// fakeCluster is a working in-memory cluster: nodes and pods by name, as
// informer caches hold them.
type fakeCluster struct {
	mu    sync.Mutex
	nodes map[string]*corev1.Node
	pods  map[string]*corev1.Pod // namespace/name
}

func newCluster() *fakeCluster {
	return &fakeCluster{nodes: map[string]*corev1.Node{}, pods: map[string]*corev1.Pod{}}
}

func (c *fakeCluster) Node(name string) (*corev1.Node, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[name]
	return n, ok
}

func (c *fakeCluster) PodsOn(node string) []*corev1.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*corev1.Pod
	for _, p := range c.pods {
		if p.Spec.NodeName == node {
			out = append(out, p)
		}
	}
	return out
}

func (c *fakeCluster) Pod(ns, name string) (*corev1.Pod, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.pods[ns+"/"+name]
	return p, ok
}

// publish sets a node's annotation as its agent would: free slices per
// GPU (4 each) and the holders counted.
func (c *fakeCluster) publish(t *testing.T, node string, free []int, holders ...string) {
	t.Helper()
	ns := contract.NodeSlices{Version: 1, Resource: vgpu, Span: contract.SpanFewest, Holders: holders}
	for i, f := range free {
		ns.GPUs = append(ns.GPUs, contract.GPUFree{UUID: node + "-gpu" + string(rune('0'+i)), Index: i, Slices: 4, Free: f})
	}
	v, err := ns.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes[node] = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Annotations: map[string]string{contract.NodeSlicesAnnotation: v}}}
}

func (c *fakeCluster) put(p *corev1.Pod) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pods[p.Namespace+"/"+p.Name] = p
}

func (c *fakeCluster) remove(p *corev1.Pod) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.pods, p.Namespace+"/"+p.Name)
}

func pod(name string, slices int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "t", Name: name, UID: types.UID("uid-" + name), CreationTimestamp: metav1.Now()},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{vgpu: *resource.NewQuantity(int64(slices), resource.DecimalSI)}}}}},
	}
}

func filter(e *extender.Extender, p *corev1.Pod, nodes ...string) extenderv1.ExtenderFilterResult {
	return e.Filter(extenderv1.ExtenderArgs{Pod: p, NodeNames: &nodes})
}

func TestFilterNamesPerGPUFit(t *testing.T) {
	c := newCluster()
	c.publish(t, "n1", []int{2, 2})
	c.publish(t, "n2", []int{3, 1})
	c.nodes["n3"] = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n3"}}
	e := extender.New(c, extender.Options{Resource: vgpu})
	r := filter(e, pod("big", 3), "n1", "n2", "n3")
	if r.Error != "" || len(*r.NodeNames) != 1 || (*r.NodeNames)[0] != "n2" {
		t.Fatalf("passed %v (error %q), want only n2", *r.NodeNames, r.Error)
	}
	if !strings.Contains(r.FailedNodes["n1"], "no GPU has 3 free slices for container main (free per GPU: 2,2)") {
		t.Fatalf("n1: %q", r.FailedNodes["n1"])
	}
	if !strings.Contains(r.FailedNodes["n3"], "publishes no free slices per GPU") {
		t.Fatalf("n3: %q", r.FailedNodes["n3"])
	}
	// A pod asking for no slice is none of the extender's business.
	plain := pod("plain", 0)
	plain.Spec.Containers[0].Resources = corev1.ResourceRequirements{}
	if r := filter(e, plain, "n1", "n3"); len(*r.NodeNames) != 2 {
		t.Fatalf("a pod without slices: passed %v", *r.NodeNames)
	}
}

// Two 2-slice pods on a node with 3+1 free: each fits alone, and the
// scheduler asks about the second before the first is bound. The second
// must count the first, from the moment the extender let it through,
// while it is bound but not yet admitted, and once the agent counts it.
func TestBackToBackPodsCannotShareTheLastRoom(t *testing.T) {
	c := newCluster()
	c.publish(t, "n1", []int{3, 1})
	now := time.Unix(1000, 0)
	e := extender.New(c, extender.Options{Resource: vgpu, Now: func() time.Time { return now }})
	a, b := pod("a", 2), pod("b", 2)
	c.put(a)
	c.put(b)
	if r := filter(e, a, "n1"); len(*r.NodeNames) != 1 {
		t.Fatalf("a alone: %v", r.FailedNodes)
	}
	if r := filter(e, b, "n1"); len(*r.NodeNames) != 0 {
		t.Fatal("b passed while a, let through a moment ago, is not bound yet")
	}
	a.Spec.NodeName = "n1" // the scheduler bound a; the kubelet has not admitted it
	if r := filter(e, b, "n1"); len(*r.NodeNames) != 0 {
		t.Fatal("b passed while a is bound and not yet counted by the agent")
	}
	c.publish(t, "n1", []int{1, 1}, contract.HolderKey("uid-a", "main"))
	r := filter(e, b, "n1")
	if len(*r.NodeNames) != 0 || !strings.Contains(r.FailedNodes["n1"], "free per GPU: 1,1)") {
		t.Fatalf("b after the agent counted a: %v %v", *r.NodeNames, r.FailedNodes)
	}
	if strings.Contains(r.FailedNodes["n1"], "not yet admitted") {
		t.Fatalf("a counted twice: %q", r.FailedNodes["n1"])
	}
	c.remove(a)
	c.publish(t, "n1", []int{3, 1})
	if r := filter(e, b, "n1"); len(*r.NodeNames) != 1 {
		t.Fatalf("b once a is gone: %v", r.FailedNodes)
	}
}

// A pod let through that is never bound stops counting after AssumeTTL.
func TestAssumptionsExpire(t *testing.T) {
	c := newCluster()
	c.publish(t, "n1", []int{2})
	now := time.Unix(1000, 0)
	e := extender.New(c, extender.Options{Resource: vgpu, AssumeTTL: 10 * time.Second, Now: func() time.Time { return now }})
	a, b := pod("a", 2), pod("b", 2)
	c.put(a)
	c.put(b)
	filter(e, a, "n1")
	if r := filter(e, b, "n1"); len(*r.NodeNames) != 0 {
		t.Fatal("b passed beside a")
	}
	now = now.Add(11 * time.Second)
	if r := filter(e, b, "n1"); len(*r.NodeNames) != 1 {
		t.Fatalf("b after a's assumption expired: %v", r.FailedNodes)
	}
	if e.Assumed() != 1 {
		t.Fatalf("%d assumed, want b alone", e.Assumed())
	}
}

func TestSpanOptIn(t *testing.T) {
	c := newCluster()
	c.publish(t, "n1", []int{2, 2})
	e := extender.New(c, extender.Options{Resource: vgpu})
	p := pod("wide", 3)
	p.Annotations = map[string]string{contract.SpanAnnotation: contract.SpanFewest}
	if r := filter(e, p, "n1"); len(*r.NodeNames) != 1 {
		t.Fatalf("an opted-in pod on a fewest node: %v", r.FailedNodes)
	}
}

func TestPrioritizePrefersTheTighterFit(t *testing.T) {
	c := newCluster()
	c.publish(t, "loose", []int{4, 4})
	c.publish(t, "tight", []int{2, 4})
	e := extender.New(c, extender.Options{Resource: vgpu})
	names := []string{"loose", "tight"}
	list := e.Prioritize(extenderv1.ExtenderArgs{Pod: pod("p", 2), NodeNames: &names})
	if len(list) != 2 || list[1].Score != extenderv1.MaxExtenderPriority || list[0].Score >= list[1].Score {
		t.Fatalf("scores %+v", list)
	}
}

// The HTTP verbs as the scheduler calls them, in both forms of node list.
func TestHandler(t *testing.T) {
	c := newCluster()
	c.publish(t, "n1", []int{2, 2})
	c.publish(t, "n2", []int{4, 0})
	srv := httptest.NewServer(extender.Handler(extender.New(c, extender.Options{Resource: vgpu}), func() bool { return true }))
	defer srv.Close()
	post := func(verb string, args extenderv1.ExtenderArgs, into any) {
		t.Helper()
		b, _ := json.Marshal(args)
		resp, err := http.Post(srv.URL+"/"+verb, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatal(err)
		}
	}
	var byNames extenderv1.ExtenderFilterResult
	names := []string{"n1", "n2"}
	post("filter", extenderv1.ExtenderArgs{Pod: pod("p", 3), NodeNames: &names}, &byNames)
	if byNames.NodeNames == nil || len(*byNames.NodeNames) != 1 || (*byNames.NodeNames)[0] != "n2" {
		t.Fatalf("by names: %+v", byNames)
	}
	var byNodes extenderv1.ExtenderFilterResult
	nodes := &corev1.NodeList{Items: []corev1.Node{*c.nodes["n1"], *c.nodes["n2"]}}
	post("filter", extenderv1.ExtenderArgs{Pod: pod("q", 3), Nodes: nodes}, &byNodes)
	if byNodes.Nodes == nil || len(byNodes.Nodes.Items) != 1 || byNodes.Nodes.Items[0].Name != "n2" || byNodes.FailedNodes["n1"] == "" {
		t.Fatalf("by nodes: %+v", byNodes)
	}
	var bad extenderv1.ExtenderFilterResult
	resp, err := http.Post(srv.URL+"/filter", "application/json", strings.NewReader("{"))
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&bad)
	_ = resp.Body.Close()
	if !strings.Contains(bad.Error, "decode") {
		t.Fatalf("a broken request: %+v", bad)
	}
}
