package kueuecheck

import (
	"fmt"
	"math"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// Cost is a workload's most GPU-hours, judged before it runs.
type Cost struct {
	// Slices the workload holds at once: every pod of every pod set.
	Slices int64
	// MaxExecution is its maximumExecutionTimeSeconds; zero when unset,
	// and then its cost is not judged (Known false).
	MaxExecution time.Duration
	// SliceShare is the largest share of a GPU one slice is on any node
	// (1 / the fewest slices any GPU is cut into); zero when no node says.
	SliceShare float64
}

// Known reports whether the cost can be judged: a maximum execution time
// and a slice share known.
func (c Cost) Known() bool { return c.MaxExecution > 0 && c.SliceShare > 0 && c.Slices > 0 }

// GPUHours is the most the workload can use: every slice's share of a GPU
// for its whole maximum execution time. Neither source of a budget (GPU
// time used, or share of GPUs held) can charge more.
func (c Cost) GPUHours() float64 {
	return float64(c.Slices) * c.SliceShare * c.MaxExecution.Hours()
}

// String says how the cost is made.
func (c Cost) String() string {
	return fmt.Sprintf("%d slices of 1/%.0f GPU for up to %s", c.Slices, math.Round(1/c.SliceShare), c.MaxExecution)
}

// costOf reads a Workload's cost: its pod sets' slices of resource and
// its maximumExecutionTimeSeconds, with share the largest share of a GPU
// one slice is.
func costOf(w *unstructured.Unstructured, resource string, share float64) Cost {
	c := Cost{SliceShare: share}
	if secs, found, _ := unstructured.NestedInt64(w.Object, "spec", "maximumExecutionTimeSeconds"); found && secs > 0 {
		c.MaxExecution = time.Duration(secs) * time.Second
	}
	sets, _, _ := unstructured.NestedSlice(w.Object, "spec", "podSets")
	for _, s := range sets {
		set, _ := s.(map[string]any)
		count, _, _ := unstructured.NestedInt64(set, "count")
		tmpl, _, _ := unstructured.NestedMap(set, "template", "spec")
		var spec corev1.PodSpec
		if runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &spec) != nil {
			continue
		}
		c.Slices += count * podSlices(spec, corev1.ResourceName(resource))
	}
	return c
}

// podSlices is what one pod holds at once: its containers and sidecars
// together, or its largest plain init container, whichever is more.
func podSlices(spec corev1.PodSpec, resource corev1.ResourceName) int64 {
	of := func(c corev1.Container) int64 {
		q, ok := c.Resources.Limits[resource]
		if !ok {
			q = c.Resources.Requests[resource]
		}
		return q.Value()
	}
	var running, init int64
	for _, c := range spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			running += of(c)
		} else {
			init = max(init, of(c))
		}
	}
	for _, c := range spec.Containers {
		running += of(c)
	}
	return max(running, init)
}

// sliceShare is the largest share of a GPU one slice is on any node, from
// the free slices per GPU each agent publishes (or its slices-per-gpu
// label); zero when no node says.
func (c *Controller) sliceShare() float64 {
	objs, err := c.nodes.List(labels.Everything())
	if err != nil {
		return 0
	}
	fewest := 0
	for _, o := range objs {
		n, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		for _, s := range nodeSlicesPerGPU(n) {
			if s > 0 && (fewest == 0 || s < fewest) {
				fewest = s
			}
		}
	}
	if fewest == 0 {
		return 0
	}
	return 1 / float64(fewest)
}

// nodeSlicesPerGPU is how many slices each GPU of a node is cut into.
func nodeSlicesPerGPU(n *unstructured.Unstructured) []int {
	if v, ok := n.GetAnnotations()[contract.NodeSlicesAnnotation]; ok {
		if ns, err := contract.ParseNodeSlices(v); err == nil {
			out := make([]int, 0, len(ns.GPUs))
			for _, g := range ns.GPUs {
				out = append(out, g.Slices)
			}
			return out
		}
	}
	var s int
	if _, err := fmt.Sscan(n.GetLabels()["gpuslice.io/slices-per-gpu"], &s); err == nil {
		return []int{s}
	}
	return nil
}
