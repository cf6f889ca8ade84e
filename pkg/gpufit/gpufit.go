// Package gpufit decides whether a pod's slice requests fit one node's GPUs,
// each container on one GPU, from what the node's agent published
// (contract.NodeSlices) and the pods bound to the node that it did not
// count yet. It is the pure core of gpu-scheduler-extender: no I/O.
package gpufit

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// MaxScore is the best score Check gives (the scheduler extender API's
// MaxExtenderPriority).
const MaxScore = 10

// Container is one container's request of slices.
type Container struct {
	Name   string
	Slices int
}

// Pod is what a fit needs of a pod.
type Pod struct {
	UID, Namespace, Name string
	// Containers are the containers that hold their slices while the pod
	// runs: the app containers and the restartable (sidecar) init
	// containers.
	Containers []Container
	// Init are the other init containers: each runs alone before the
	// app containers and its slices are handed on to them, so each must
	// fit but none adds to what the pod holds.
	Init []Container
	// Span is the pod's opt-in (contract.SpanAnnotation) to spanning GPUs
	// where no one GPU holds a container's request.
	Span bool
}

// Slices is the total the pod's holding containers ask for.
func (p Pod) Slices() int {
	n := 0
	for _, c := range p.Containers {
		n += c.Slices
	}
	return n
}

// Node is one node as the extender sees it.
type Node struct {
	// State is what the node's agent last published.
	State contract.NodeSlices
	// Bound are the pods bound to the node, or assumed to be going there,
	// oldest first; those of their containers the agent did not count
	// among its holders still come out of the free slices.
	Bound []Pod
}

// Result is a pod's fit on a node.
type Result struct {
	// Fits says whether every container of the pod gets its slices on one
	// GPU (or, where the pod opts in and the node allows it, on several).
	Fits bool
	// Reason says why not, naming per-GPU fit; empty when it fits.
	Reason string
	// Score ranks nodes it fits on, 0 to MaxScore: higher where the GPUs
	// it takes are fuller, so that whole GPUs stay free for large
	// requests.
	Score int
	// Spans is true when it fits only by spanning GPUs (the pod opted in).
	Spans bool
}

// Check decides whether pod fits node.
func Check(n Node, pod Pod) Result {
	free := make([]int, len(n.State.GPUs))
	for i, g := range n.State.GPUs {
		free[i] = g.Free
	}
	coming := 0
	held := make(map[string]bool, len(n.State.Holders))
	for _, h := range n.State.Holders {
		held[h] = true
	}
	for _, b := range n.Bound {
		if b.UID == pod.UID {
			continue
		}
		for _, c := range b.Containers {
			if c.Slices <= 0 || held[contract.HolderKey(b.UID, c.Name)] || held[contract.HolderNameKey(b.Namespace, b.Name, c.Name)] {
				continue
			}
			coming += c.Slices
			if i, ok := bestFit(free, c.Slices); ok {
				free[i] -= c.Slices
			} else {
				spanTake(free, c.Slices)
			}
		}
	}
	canSpan := pod.Span && n.State.Span == contract.SpanFewest
	for _, c := range pod.Init {
		if c.Slices <= 0 {
			continue
		}
		if _, ok := bestFit(free, c.Slices); !ok && (!canSpan || sum(free) < c.Slices) {
			return Result{Reason: noRoom(c, free, coming)}
		}
	}
	res := Result{Fits: true}
	tightness, counted := 0.0, 0
	for _, c := range pod.Containers {
		if c.Slices <= 0 {
			continue
		}
		if i, ok := bestFit(free, c.Slices); ok {
			tightness += float64(c.Slices) / float64(free[i])
			counted++
			free[i] -= c.Slices
			continue
		}
		if !canSpan || sum(free) < c.Slices {
			return Result{Reason: noRoom(c, free, coming)}
		}
		res.Spans = true
		spanTake(free, c.Slices)
	}
	if counted > 0 {
		res.Score = int(float64(MaxScore)*tightness/float64(counted) + 0.5)
	}
	return res
}

// bestFit is the GPU with the fewest free slices that still holds n; ties
// go to the lower index, as the device plugin's binpack placement.
func bestFit(free []int, n int) (int, bool) {
	best, found := 0, false
	for i, f := range free {
		if f >= n && (!found || f < free[best]) {
			best, found = i, true
		}
	}
	return best, found
}

// spanTake takes n slices from the GPUs with the most free first, as the
// device plugin spans a request, or all there is when that is less.
func spanTake(free []int, n int) {
	order := make([]int, len(free))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return free[order[a]] > free[order[b]] })
	for _, i := range order {
		t := min(n, free[i])
		free[i] -= t
		n -= t
	}
}

func sum(free []int) int {
	n := 0
	for _, f := range free {
		n += f
	}
	return n
}

// noRoom names per-GPU fit: what the container asks for, what each GPU
// has free, and what pods bound to the node but not yet counted by its
// agent still take.
func noRoom(c Container, free []int, coming int) string {
	parts := make([]string, len(free))
	for i, f := range free {
		parts[i] = strconv.Itoa(f)
	}
	msg := fmt.Sprintf("gpuslice: no GPU has %d free slices for container %s (free per GPU: %s)", c.Slices, c.Name, strings.Join(parts, ","))
	if len(free) == 0 {
		msg = fmt.Sprintf("gpuslice: no GPU can hold %d slices for container %s (the node publishes no GPU)", c.Slices, c.Name)
	}
	if coming > 0 {
		msg += fmt.Sprintf(", after %d slices of pods bound to the node and not yet admitted", coming)
	}
	return msg
}
