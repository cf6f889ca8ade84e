// Package podpolicy reads the compute policy each pod on this node asks
// for with the gpuslice.io/compute-policy annotation, and names the node's
// pods by UID (and gives their UIDs by name). It lists the node's pods
// (field selector spec.nodeName) once and then watches them, as metadata
// only, so that a new pod is known at once and the agent's steady load on
// the API server is one watch every few minutes, not a list every
// interval; a client that cannot watch is listed every interval. Lookups
// are answered from what it knows, so the enforcer never calls the API
// server.
package podpolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// Annotation is the pod annotation naming a compute policy.
const Annotation = "gpuslice.io/compute-policy"

// Pods lists the pods on a node; *kube.Client lists them from the API
// server, as metadata only.
type Pods interface {
	PodsOnNode(ctx context.Context, node string) ([]kube.Meta, error)
}

// Stream is a client that can also watch the node's pods; *kube.Client
// can.
type Stream interface {
	ListPodsOnNode(ctx context.Context, node string) ([]kube.Meta, string, error)
	WatchPodsOnNode(ctx context.Context, node, resourceVersion string, fn func(kube.WatchEvent)) (string, error)
}

var (
	_ Pods   = (*kube.Client)(nil)
	_ Stream = (*kube.Client)(nil)
)

// Watcher knows the compute policy of every pod on one node.
type Watcher struct {
	client   Pods
	node     string
	interval time.Duration
	log      *slog.Logger

	mu     sync.RWMutex
	policy map[string]enforce.Policy // "namespace/pod" -> policy
	byUID  map[string]kube.Meta      // the node's pods by UID
	uids   map[node.PodName]string
}

// New returns a watcher of node's pods, refreshed every interval.
func New(client Pods, node string, interval time.Duration, log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{client: client, node: node, interval: interval, log: log, policy: map[string]enforce.Policy{}}
}

// Policy returns the policy a pod's annotation names, or "" when it names
// none (or names one that is not valid, which is logged when seen).
func (w *Watcher) Policy(namespace, pod string) enforce.Policy {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.policy[namespace+"/"+pod]
}

// Pod names the pod on the node with uid, as of the last list; ok is
// false for a pod not listed (not on the node, or not listed yet).
func (w *Watcher) Pod(uid string) (namespace, name string, ok bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	p, ok := w.byUID[uid]
	return p.Namespace, p.Name, ok
}

// PodUIDs returns the UIDs of the node's pods by namespace and name, as of
// the last list; nil before the first. The map is replaced, never changed,
// by the next list.
func (w *Watcher) PodUIDs() map[node.PodName]string {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.uids
}

// Refresh lists the node's pods once and replaces what is known.
func (w *Watcher) Refresh(ctx context.Context) error {
	pods, err := w.client.PodsOnNode(ctx, w.node)
	if err != nil {
		return fmt.Errorf("list pods on node %s: %w", w.node, err)
	}
	w.replace(pods)
	return nil
}

// replace makes pods all that is known.
func (w *Watcher) replace(pods []kube.Meta) {
	next, byUID := map[string]enforce.Policy{}, make(map[string]kube.Meta, len(pods))
	uids := make(map[node.PodName]string, len(pods))
	for _, p := range pods {
		w.add(next, byUID, uids, p)
	}
	w.mu.Lock()
	w.policy, w.byUID, w.uids = next, byUID, uids
	w.mu.Unlock()
}

// add records one pod in the maps.
func (w *Watcher) add(policy map[string]enforce.Policy, byUID map[string]kube.Meta, uids map[node.PodName]string, p kube.Meta) {
	if p.UID != "" {
		byUID[p.UID] = kube.Meta{Namespace: p.Namespace, Name: p.Name, UID: p.UID}
		uids[node.PodName{Namespace: p.Namespace, Name: p.Name}] = p.UID
	}
	delete(policy, p.Namespace+"/"+p.Name)
	v, ok := p.Annotations[Annotation]
	if !ok {
		return
	}
	pol, err := enforce.ParsePolicy(v)
	if err != nil {
		w.log.Warn("ignoring compute policy annotation", "namespace", p.Namespace, "pod", p.Name, "err", err)
		return
	}
	policy[p.Namespace+"/"+p.Name] = pol
}

// apply records one watched change. The maps are copied, never changed in
// place: PodUIDs hands its map out.
func (w *Watcher) apply(ev kube.WatchEvent) {
	w.mu.RLock()
	policy, byUID, uids := maps.Clone(w.policy), maps.Clone(w.byUID), maps.Clone(w.uids)
	w.mu.RUnlock()
	if policy == nil {
		policy = map[string]enforce.Policy{}
	}
	if byUID == nil {
		byUID = map[string]kube.Meta{}
	}
	if uids == nil {
		uids = map[node.PodName]string{}
	}
	p := ev.Object
	switch ev.Type {
	case "ADDED", "MODIFIED":
		w.add(policy, byUID, uids, p)
	case "DELETED":
		delete(policy, p.Namespace+"/"+p.Name)
		delete(byUID, p.UID)
		if uids[node.PodName{Namespace: p.Namespace, Name: p.Name}] == p.UID {
			delete(uids, node.PodName{Namespace: p.Namespace, Name: p.Name})
		}
	default:
		return
	}
	w.mu.Lock()
	w.policy, w.byUID, w.uids = policy, byUID, uids
	w.mu.Unlock()
}

// Run keeps what is known current until ctx ends: by a watch where the
// client can watch, otherwise by a list every interval. Failures keep the
// last known policies, are logged and retried with backoff.
func (w *Watcher) Run(ctx context.Context) {
	if s, ok := w.client.(Stream); ok {
		w.stream(ctx, s)
		return
	}
	for {
		if err := w.Refresh(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("pod compute policies not refreshed", "err", err)
		}
		if !sleep(ctx, w.interval) {
			return
		}
	}
}

// minWatch is how long a watch must last to be resumed at once: one that
// ends sooner (a proxy closing it, an API server answering with nothing)
// is resumed after the backoff, never in a loop.
const minWatch = time.Second

// stream lists the node's pods, then follows them by watch from the
// list's version, resuming each watch where the last one got to; it lists
// again when that version has expired or a watch fails.
func (w *Watcher) stream(ctx context.Context, s Stream) {
	retry := time.Second
	backoff := func() bool {
		ok := sleep(ctx, retry)
		retry = min(2*retry, max(w.interval, time.Second))
		return ok
	}
	for ctx.Err() == nil {
		pods, rv, err := s.ListPodsOnNode(ctx, w.node)
		if err != nil {
			w.log.Warn("pod compute policies not refreshed", "err", err, "retry_in", retry)
			if !backoff() {
				return
			}
			continue
		}
		w.replace(pods)
		for ctx.Err() == nil {
			start := time.Now()
			if rv, err = s.WatchPodsOnNode(ctx, w.node, rv, w.apply); err != nil {
				break
			}
			if time.Since(start) >= minWatch {
				retry = time.Second
			} else if !backoff() {
				return
			}
		}
		if err != nil && !errors.Is(err, kube.ErrExpired) && ctx.Err() == nil {
			// A watch that fails (the API server away, no permission to
			// watch) falls back to a list after the backoff, which grows
			// to the interval: never staler than listing every interval.
			w.log.Warn("watch of the node's pods failed; listing again", "err", err, "retry_in", retry)
			if !backoff() {
				return
			}
		}
	}
}

// sleep waits d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
