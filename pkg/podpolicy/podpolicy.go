// Package podpolicy reads the compute policy each pod on this node asks
// for with the gpuslice.io/compute-policy annotation, and names the node's
// pods by UID (and gives their UIDs by name). It lists the node's
// pods (field selector spec.nodeName) on an interval and answers lookups
// from that list, so the enforcer never calls the API server.
package podpolicy

import (
	"context"
	"fmt"
	"log/slog"
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

var _ Pods = (*kube.Client)(nil)

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
	next, byUID := map[string]enforce.Policy{}, make(map[string]kube.Meta, len(pods))
	uids := make(map[node.PodName]string, len(pods))
	for _, p := range pods {
		if p.UID != "" {
			byUID[p.UID] = kube.Meta{Namespace: p.Namespace, Name: p.Name, UID: p.UID}
			uids[node.PodName{Namespace: p.Namespace, Name: p.Name}] = p.UID
		}
		v, ok := p.Annotations[Annotation]
		if !ok {
			continue
		}
		policy, err := enforce.ParsePolicy(v)
		if err != nil {
			w.log.Warn("ignoring compute policy annotation", "namespace", p.Namespace, "pod", p.Name, "err", err)
			continue
		}
		next[p.Namespace+"/"+p.Name] = policy
	}
	w.mu.Lock()
	w.policy, w.byUID, w.uids = next, byUID, uids
	w.mu.Unlock()
	return nil
}

// Run refreshes every interval until ctx ends. Failures keep the last
// known policies and are logged.
func (w *Watcher) Run(ctx context.Context) {
	for {
		if err := w.Refresh(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("pod compute policies not refreshed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(w.interval):
		}
	}
}
