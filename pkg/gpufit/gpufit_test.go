package gpufit_test

import (
	"strings"
	"testing"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/gpufit"
)

func state(span string, free ...int) contract.NodeSlices {
	ns := contract.NodeSlices{Version: 1, Resource: "nvidia.com/vgpu", Span: span}
	for i, f := range free {
		ns.GPUs = append(ns.GPUs, contract.GPUFree{UUID: "GPU-" + string(rune('a'+i)), Index: i, Slices: 4, Free: f})
	}
	return ns
}

func pod(uid string, sizes ...int) gpufit.Pod {
	p := gpufit.Pod{UID: uid, Namespace: "ns", Name: "p-" + uid}
	for i, n := range sizes {
		p.Containers = append(p.Containers, gpufit.Container{Name: "c" + string(rune('0'+i)), Slices: n})
	}
	return p
}

func TestCheck(t *testing.T) {
	spanning := pod("new", 3)
	spanning.Span = true
	heldA := state(contract.SpanFewest, 3, 1)
	heldA.Holders = []string{contract.HolderKey("a", "c0")}
	byName := state(contract.SpanFewest, 3, 1)
	byName.Holders = []string{contract.HolderNameKey("ns", "p-a", "c0")}
	initPod := pod("new", 1)
	initPod.Init = []gpufit.Container{{Name: "setup", Slices: 4}}
	for _, tc := range []struct {
		name   string
		node   gpufit.Node
		pod    gpufit.Pod
		fits   bool
		spans  bool
		reason string
	}{
		{name: "2+2 free cannot hold 3", node: gpufit.Node{State: state(contract.SpanFewest, 2, 2)}, pod: pod("new", 3),
			reason: "no GPU has 3 free slices for container c0 (free per GPU: 2,2)"},
		{name: "3+1 free holds 3", node: gpufit.Node{State: state(contract.SpanFewest, 3, 1)}, pod: pod("new", 3), fits: true},
		{name: "each container on its own GPU", node: gpufit.Node{State: state(contract.SpanFewest, 2, 2)}, pod: pod("new", 2, 2), fits: true},
		{name: "a pod bound and not yet counted takes its room first",
			node: gpufit.Node{State: state(contract.SpanFewest, 3, 1), Bound: []gpufit.Pod{pod("a", 2)}}, pod: pod("new", 2),
			reason: "(free per GPU: 1,1), after 2 slices of pods bound to the node and not yet admitted"},
		{name: "a pod the agent counted is not counted twice",
			node: gpufit.Node{State: heldA, Bound: []gpufit.Pod{pod("a", 2)}}, pod: pod("new", 3), fits: true},
		{name: "nor one counted by name",
			node: gpufit.Node{State: byName, Bound: []gpufit.Pod{pod("a", 2)}}, pod: pod("new", 3), fits: true},
		{name: "the pod itself is not pending against itself",
			node: gpufit.Node{State: state(contract.SpanFewest, 3, 1), Bound: []gpufit.Pod{pod("new", 3)}}, pod: pod("new", 3), fits: true},
		{name: "opted in on a fewest node spans", node: gpufit.Node{State: state(contract.SpanFewest, 2, 2)}, pod: spanning, fits: true, spans: true},
		{name: "opted in on a never node does not", node: gpufit.Node{State: state(contract.SpanNever, 2, 2)}, pod: spanning,
			reason: "no GPU has 3 free slices"},
		{name: "opted in but too few in all", node: gpufit.Node{State: state(contract.SpanFewest, 1, 1)}, pod: spanning,
			reason: "(free per GPU: 1,1)"},
		{name: "an init container must fit alone", node: gpufit.Node{State: state(contract.SpanFewest, 3, 3)}, pod: initPod,
			reason: "no GPU has 4 free slices for container setup"},
		{name: "no GPU published", node: gpufit.Node{State: state(contract.SpanFewest)}, pod: pod("new", 1),
			reason: "the node publishes no GPU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := gpufit.Check(tc.node, tc.pod)
			if r.Fits != tc.fits || r.Spans != tc.spans {
				t.Fatalf("fits=%v spans=%v (%s), want fits=%v spans=%v", r.Fits, r.Spans, r.Reason, tc.fits, tc.spans)
			}
			if !strings.Contains(r.Reason, tc.reason) {
				t.Fatalf("reason %q, want it to contain %q", r.Reason, tc.reason)
			}
		})
	}
}

// Two pods placed back to back on a node with 3+1 free: each fits alone,
// together only if the second counts the first.
func TestBackToBack(t *testing.T) {
	n := gpufit.Node{State: state(contract.SpanFewest, 3, 1)}
	if r := gpufit.Check(n, pod("b", 2)); !r.Fits {
		t.Fatalf("alone: %s", r.Reason)
	}
	n.Bound = []gpufit.Pod{pod("a", 2)}
	if r := gpufit.Check(n, pod("b", 2)); r.Fits {
		t.Fatal("the second 2-slice pod fits beside the first on 3+1 free")
	}
}

func TestScorePrefersTheTighterFit(t *testing.T) {
	tight := gpufit.Check(gpufit.Node{State: state(contract.SpanFewest, 2, 4)}, pod("new", 2))
	loose := gpufit.Check(gpufit.Node{State: state(contract.SpanFewest, 4, 4)}, pod("new", 2))
	if tight.Score != gpufit.MaxScore || loose.Score >= tight.Score {
		t.Fatalf("tight %d, loose %d", tight.Score, loose.Score)
	}
}
