// Package extender is gpu-scheduler-extender's logic: a kube-scheduler
// extender (filter and prioritize verbs) that places a pod asking for
// slices (nvidia.com/vgpu) only on nodes where one GPU holds each of its
// containers' requests. The scheduler sees only a node's total of free
// slices; the extender reads each node's free slices per GPU as the node's
// agent publishes them (contract.NodeSlicesAnnotation) and counts against
// them the pods bound to the node that the agent has not counted yet, and
// the pods it let through that are not bound yet, so that two pods placed
// back to back cannot both take the last room on one GPU.
package extender

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/gpufit"
)

// Cluster is what the extender reads of the cluster, from informer
// caches.
type Cluster interface {
	// Node returns a node by name, or false.
	Node(name string) (*corev1.Node, bool)
	// PodsOn returns the pods bound to a node.
	PodsOn(node string) []*corev1.Pod
	// Pod returns a pod by namespace and name, or false.
	Pod(namespace, name string) (*corev1.Pod, bool)
}

// Options configure an Extender.
type Options struct {
	// Resource is the extended resource of slices.
	Resource string
	// AssumeTTL is how long a pod the extender let through counts on the
	// nodes it passed before it is seen bound: the scheduler binds (and
	// the extender's cache sees it) within seconds, or retries the pod.
	AssumeTTL time.Duration
	// MaxAssumed bounds the pods counted that way.
	MaxAssumed int
	// RecheckAfter is how long Recheck leaves a node's change to the
	// scheduler's own retry before it judges whether the scheduler must be
	// woken for it; 2 s when zero.
	RecheckAfter time.Duration
	Logger       *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Extender answers kube-scheduler's filter and prioritize calls.
type Extender struct {
	opts    Options
	cluster Cluster
	log     *slog.Logger

	mu      sync.Mutex
	assumed map[types.UID]assumption
	refused map[types.UID]refusal
	changed map[string]time.Time
}

// assumption is a pod the extender let through onto nodes, not seen bound
// yet: it counts on every one of them until it is.
type assumption struct {
	pod   gpufit.Pod
	nodes map[string]bool
	at    time.Time
}

// New returns an extender reading cluster.
func New(cluster Cluster, opts Options) *Extender {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.AssumeTTL <= 0 {
		opts.AssumeTTL = 30 * time.Second
	}
	if opts.MaxAssumed <= 0 {
		opts.MaxAssumed = 10000
	}
	if opts.RecheckAfter <= 0 {
		opts.RecheckAfter = 2 * time.Second
	}
	return &Extender{opts: opts, cluster: cluster, log: opts.Logger,
		assumed: map[types.UID]assumption{}, refused: map[types.UID]refusal{}, changed: map[string]time.Time{}}
}

// PodOf reads what a pod asks for of resource: per container, limits (an
// extended resource's requests equal them) or else requests; sidecar init
// containers hold theirs like app containers.
func PodOf(pod *corev1.Pod, resource string) gpufit.Pod {
	p := gpufit.Pod{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name,
		Span: pod.Annotations[contract.SpanAnnotation] == contract.SpanFewest}
	for _, c := range pod.Spec.InitContainers {
		fc := gpufit.Container{Name: c.Name, Slices: slices(c, resource)}
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			p.Containers = append(p.Containers, fc)
		} else {
			p.Init = append(p.Init, fc)
		}
	}
	for _, c := range pod.Spec.Containers {
		p.Containers = append(p.Containers, gpufit.Container{Name: c.Name, Slices: slices(c, resource)})
	}
	return p
}

func slices(c corev1.Container, resource string) int {
	q, ok := c.Resources.Limits[corev1.ResourceName(resource)]
	if !ok {
		q, ok = c.Resources.Requests[corev1.ResourceName(resource)]
	}
	if !ok {
		return 0
	}
	return int(q.Value())
}

// asks reports whether a pod asks for any slice.
func asks(p gpufit.Pod) bool {
	for _, list := range [][]gpufit.Container{p.Containers, p.Init} {
		for _, c := range list {
			if c.Slices > 0 {
				return true
			}
		}
	}
	return false
}

// Filter answers the filter verb: the nodes where the pod fits, and why
// each other fails, naming per-GPU fit. A pod asking for no slice passes
// every node. The pod then counts on every node it passes until it is seen
// bound.
func (e *Extender) Filter(args extenderv1.ExtenderArgs) extenderv1.ExtenderFilterResult {
	if args.Pod == nil {
		return extenderv1.ExtenderFilterResult{Error: "no pod in the request"}
	}
	names, byName := nodeNames(args)
	pod := PodOf(args.Pod, e.opts.Resource)
	if !asks(pod) {
		return result(args, names, byName, nil)
	}
	failed := extenderv1.FailedNodesMap{}
	var passed []string
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pruneLocked()
	for _, name := range names {
		r := e.checkLocked(name, pod)
		if r.Fits {
			passed = append(passed, name)
		} else {
			failed[name] = r.Reason
		}
	}
	e.assumeLocked(pod, passed)
	e.refuseLocked(pod, passed, failed)
	e.log.Debug("filter", "pod", args.Pod.Namespace+"/"+args.Pod.Name, "passed", len(passed), "failed", len(failed))
	return result(args, passed, byName, failed)
}

// Prioritize answers the prioritize verb: nodes where the pod's containers
// fill GPUs closer to full score higher, so whole GPUs stay free for
// large requests.
func (e *Extender) Prioritize(args extenderv1.ExtenderArgs) extenderv1.HostPriorityList {
	names, _ := nodeNames(args)
	out := make(extenderv1.HostPriorityList, 0, len(names))
	if args.Pod == nil {
		return out
	}
	pod := PodOf(args.Pod, e.opts.Resource)
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, name := range names {
		var score int64
		if asks(pod) {
			if r := e.checkLocked(name, pod); r.Fits {
				score = int64(r.Score) * extenderv1.MaxExtenderPriority / gpufit.MaxScore
			}
		}
		out = append(out, extenderv1.HostPriority{Host: name, Score: score})
	}
	return out
}

// checkLocked is pod's fit on the named node.
func (e *Extender) checkLocked(name string, pod gpufit.Pod) gpufit.Result {
	node, ok := e.cluster.Node(name)
	if !ok {
		return gpufit.Result{Reason: "gpuslice: node not in the extender's cache yet"}
	}
	value, ok := node.Annotations[contract.NodeSlicesAnnotation]
	if !ok {
		return gpufit.Result{Reason: "gpuslice: the node publishes no free slices per GPU (annotation " + contract.NodeSlicesAnnotation + "); is gpu-agent running there with access to its Node?"}
	}
	state, err := contract.ParseNodeSlices(value)
	if err != nil {
		return gpufit.Result{Reason: "gpuslice: " + err.Error()}
	}
	if state.Resource != e.opts.Resource {
		return gpufit.Result{Reason: fmt.Sprintf("gpuslice: the node offers %s, not %s", state.Resource, e.opts.Resource)}
	}
	return gpufit.Check(gpufit.Node{State: state, Bound: e.boundLocked(name)}, pod)
}

// boundLocked are the pods counted against a node besides what its agent
// published: those bound to it, oldest first, then those the extender let
// through onto it, in the order it did.
func (e *Extender) boundLocked(name string) []gpufit.Pod {
	pods := e.cluster.PodsOn(name)
	sort.SliceStable(pods, func(i, j int) bool { return pods[i].CreationTimestamp.Before(&pods[j].CreationTimestamp) })
	var out []gpufit.Pod
	seen := map[string]bool{}
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if fp := PodOf(p, e.opts.Resource); asks(fp) {
			out = append(out, fp)
			seen[fp.UID] = true
		}
	}
	var assumed []assumption
	for _, a := range e.assumed {
		if a.nodes[name] && !seen[a.pod.UID] {
			assumed = append(assumed, a)
		}
	}
	sort.Slice(assumed, func(i, j int) bool { return assumed[i].at.Before(assumed[j].at) })
	for _, a := range assumed {
		out = append(out, a.pod)
	}
	return out
}

// assumeLocked counts pod on the nodes it passed until it is seen bound,
// replacing what an earlier filter of it assumed.
func (e *Extender) assumeLocked(pod gpufit.Pod, nodes []string) {
	uid := types.UID(pod.UID)
	if len(nodes) == 0 {
		delete(e.assumed, uid)
		return
	}
	if _, ok := e.assumed[uid]; !ok && len(e.assumed) >= e.opts.MaxAssumed {
		e.log.Warn("too many pods let through and not yet bound; the oldest stops counting", "max", e.opts.MaxAssumed)
		e.dropOldestLocked()
	}
	set := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		set[n] = true
	}
	e.assumed[uid] = assumption{pod: pod, nodes: set, at: e.opts.Now()}
}

func (e *Extender) dropOldestLocked() {
	var oldest types.UID
	var at time.Time
	for uid, a := range e.assumed {
		if oldest == "" || a.at.Before(at) {
			oldest, at = uid, a.at
		}
	}
	delete(e.assumed, oldest)
}

// pruneLocked stops counting pods let through that are now bound (the
// cache then counts them on their node), gone, or past AssumeTTL.
func (e *Extender) pruneLocked() {
	now := e.opts.Now()
	for uid, a := range e.assumed {
		p, ok := e.cluster.Pod(a.pod.Namespace, a.pod.Name)
		if !ok || p.UID != uid || p.Spec.NodeName != "" || now.Sub(a.at) > e.opts.AssumeTTL {
			delete(e.assumed, uid)
		}
	}
}

// Assumed is how many pods let through are counted and not yet bound.
func (e *Extender) Assumed() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.assumed)
}

// nodeNames are the candidate nodes' names, whichever form the scheduler
// sent (nodeCacheCapable sends names; otherwise whole nodes).
func nodeNames(args extenderv1.ExtenderArgs) ([]string, map[string]corev1.Node) {
	if args.NodeNames != nil {
		return *args.NodeNames, nil
	}
	if args.Nodes == nil {
		return nil, nil
	}
	names := make([]string, 0, len(args.Nodes.Items))
	byName := make(map[string]corev1.Node, len(args.Nodes.Items))
	for _, n := range args.Nodes.Items {
		names = append(names, n.Name)
		byName[n.Name] = n
	}
	return names, byName
}

// result answers in the form the scheduler asked in.
func result(args extenderv1.ExtenderArgs, passed []string, byName map[string]corev1.Node, failed extenderv1.FailedNodesMap) extenderv1.ExtenderFilterResult {
	res := extenderv1.ExtenderFilterResult{FailedNodes: failed}
	if args.NodeNames != nil {
		names := append([]string{}, passed...)
		res.NodeNames = &names
		return res
	}
	list := &corev1.NodeList{Items: make([]corev1.Node, 0, len(passed))}
	for _, n := range passed {
		list.Items = append(list.Items, byName[n])
	}
	res.Nodes = list
	return res
}
