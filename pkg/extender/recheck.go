package extender

import (
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/types"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/gpuslice/gpuslice/pkg/gpufit"
)

// The scheduler tries a pod the extender refused again on cluster events
// (a node's labels changing, a pod on it deleted), and otherwise only
// every 5 minutes. It reacts to an event as soon as its own cache has it;
// the extender reads its own cache, which may get the same event a moment
// later. A pod tried again in that moment is refused on the old state and
// waits for the next event, minutes away. So the extender remembers whom
// it refused where and when, and when a node's state changes after a
// refusal and the pod fits there now, it has the scheduler woken for that
// node (Recheck): the wake-up is written after the extender's cache holds
// the change, so the retry it causes is judged on that change.

// refusal is a pod the extender let through onto no node and not yet seen
// bound or gone, with when it refused each node.
type refusal struct {
	pod   gpufit.Pod
	nodes map[string]time.Time
}

// refuseLocked remembers a pod refused on every node it was tried on, or
// forgets it once it passes one.
func (e *Extender) refuseLocked(pod gpufit.Pod, passed []string, failed extenderv1.FailedNodesMap) {
	uid := types.UID(pod.UID)
	if len(passed) > 0 || len(failed) == 0 {
		delete(e.refused, uid)
		return
	}
	r, ok := e.refused[uid]
	if !ok {
		if len(e.refused) >= e.opts.MaxAssumed {
			e.dropOldestRefusalLocked()
		}
		r = refusal{nodes: map[string]time.Time{}}
	}
	r.pod = pod
	now := e.opts.Now()
	for name := range failed {
		r.nodes[name] = now
	}
	e.refused[uid] = r
}

func (e *Extender) dropOldestRefusalLocked() {
	var oldest types.UID
	var at time.Time
	for uid, r := range e.refused {
		for _, t := range r.nodes {
			if oldest == "" || t.Before(at) {
				oldest, at = uid, t
			}
		}
	}
	delete(e.refused, oldest)
}

// NodeChanged tells the extender its cache has a change that can free room
// on the named node: the node's published free slices changed, the node
// appeared, or a pod bound to it went away.
func (e *Extender) NodeChanged(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.changed[name] = e.opts.Now()
}

// Recheck returns the nodes, sorted, for which the scheduler must be woken:
// nodes whose change is at least RecheckAfter old, where a pod refused
// before that change fits now. Pods the scheduler tried again after the
// change were judged on it and wake nothing. A node is returned once per
// change.
func (e *Extender) Recheck() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pruneRefusedLocked()
	now := e.opts.Now()
	var wake []string
	for node, at := range e.changed {
		if now.Sub(at) < e.opts.RecheckAfter {
			continue
		}
		delete(e.changed, node)
		if e.fitsRefusedLocked(node, at) {
			wake = append(wake, node)
			for _, r := range e.refused {
				if _, ok := r.nodes[node]; ok {
					r.nodes[node] = now // the scheduler tries them all again
				}
			}
		}
	}
	sort.Strings(wake)
	return wake
}

// fitsRefusedLocked reports whether a pod refused on node before changed
// fits there now.
func (e *Extender) fitsRefusedLocked(node string, changed time.Time) bool {
	for _, r := range e.refused {
		at, ok := r.nodes[node]
		if ok && at.Before(changed) && e.checkLocked(node, r.pod).Fits {
			return true
		}
	}
	return false
}

// pruneRefusedLocked forgets refused pods now bound, gone or replaced.
func (e *Extender) pruneRefusedLocked() {
	for uid, r := range e.refused {
		p, ok := e.cluster.Pod(r.pod.Namespace, r.pod.Name)
		if !ok || p.UID != uid || p.Spec.NodeName != "" {
			delete(e.refused, uid)
		}
	}
}

// Refused is how many pending pods the extender remembers refusing.
func (e *Extender) Refused() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.refused)
}
