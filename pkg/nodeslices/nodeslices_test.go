package nodeslices_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nodeslices"
)

func snapshot() *node.Snapshot {
	dev := func(uuid string, index, slices, allocated int, healthy bool) node.Device {
		d := node.Device{Slices: slices, Allocated: allocated, Health: gpudev.Health{UUID: uuid, Healthy: healthy}}
		d.UUID, d.Index = uuid, index
		return d
	}
	return &node.Snapshot{
		Time:    time.Unix(100, 0),
		Devices: []node.Device{dev("GPU-b", 1, 4, 2, true), dev("GPU-a", 0, 4, 1, true), dev("GPU-c", 2, 4, 0, false), dev("GPU-d", 3, 4, 0, true)},
		Containers: []node.Container{
			{Namespace: "ns", Pod: "p", Container: "c", PodUID: "uid-p", UUID: "GPU-b", Slices: 2},
			{Namespace: "ns", Pod: "q", Container: "c", UUID: "GPU-a", Slices: 1},
			{Namespace: "ns", Pod: "idle", Container: "c", UUID: "GPU-a"},
		},
	}
}

func TestFrom(t *testing.T) {
	ns := nodeslices.From(snapshot(), "nvidia.com/vgpu", contract.SpanNever, func(uuid string) bool { return uuid == "GPU-d" })
	var free []int
	for i, g := range ns.GPUs {
		if g.Index != i {
			t.Fatalf("GPUs not in index order: %+v", ns.GPUs)
		}
		free = append(free, g.Free)
	}
	// GPU-c is unhealthy, GPU-d serves DRA claims: none free on either.
	if want := []int{3, 2, 0, 0}; !equal(free, want) {
		t.Fatalf("free %v, want %v", free, want)
	}
	if want := []string{"ns/q/c", "uid-p/c"}; !equal(ns.Holders, want) {
		t.Fatalf("holders %v, want %v", ns.Holders, want)
	}
	if _, err := ns.Marshal(); err != nil {
		t.Fatal(err)
	}
}

// TestFromLeavesMIGSlicesOut: the slices of a MIG instance cut into
// slices are of a resource of their own (nvidia.com/vgpu-mig-*): neither
// the instance nor its holders count toward nvidia.com/vgpu's free slices,
// which the scheduler extender places by.
func TestFromLeavesMIGSlicesOut(t *testing.T) {
	s := snapshot()
	inst := node.Device{Slices: 4, Allocated: 1, Health: gpudev.Health{UUID: "MIG-x", Healthy: true}, Instance: &gpudev.InForce{}}
	inst.UUID, inst.Index = "MIG-x", 4
	s.Devices = append(s.Devices, inst)
	s.Containers = append(s.Containers, node.Container{Namespace: "ns", Pod: "m", Container: "c", PodUID: "uid-m", UUID: "MIG-x", Slices: 1})
	ns := nodeslices.From(s, "nvidia.com/vgpu", contract.SpanNever, nil)
	for _, g := range ns.GPUs {
		if g.UUID == "MIG-x" {
			t.Errorf("a MIG instance's slices are published as nvidia.com/vgpu's: %+v", ns.GPUs)
		}
	}
	for _, h := range ns.Holders {
		if h == "uid-m/c" {
			t.Errorf("a MIG slice holder is listed among nvidia.com/vgpu's: %v", ns.Holders)
		}
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// node is a working fake of the API server's Node annotations: it applies
// JSON merge patches to one map.
type fakeNode struct {
	annotations map[string]string
	patches     int
	fail        error
}

func (f *fakeNode) PatchNode(_ context.Context, _ string, patch any, _ string) error {
	if f.fail != nil {
		return f.fail
	}
	f.patches++
	b, _ := json.Marshal(patch)
	var p struct {
		Metadata struct {
			Annotations map[string]*string `json:"annotations"`
			Labels      map[string]*string `json:"labels"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	// Labels and annotations share one map here: their keys differ.
	for _, m := range []map[string]*string{p.Metadata.Annotations, p.Metadata.Labels} {
		for k, v := range m {
			if v == nil {
				delete(f.annotations, k)
			} else {
				f.annotations[k] = *v
			}
		}
	}
	return nil
}

func TestPublishWritesChangesOnly(t *testing.T) {
	api := &fakeNode{annotations: map[string]string{}}
	p := nodeslices.NewPublisher(api, "n", nil)
	ctx, now := context.Background(), time.Unix(1000, 0)
	ns := nodeslices.From(snapshot(), "nvidia.com/vgpu", contract.SpanFewest, nil)
	for range 3 {
		if err := p.Publish(ctx, ns, now); err != nil {
			t.Fatal(err)
		}
	}
	if api.patches != 1 {
		t.Fatalf("%d patches for one unchanged value, want 1", api.patches)
	}
	// The label the scheduler requeues on: GPU-d's 4 free, the most.
	if got := api.annotations[contract.NodeSlicesFreeMaxLabel]; got != "4" {
		t.Errorf("label %s = %q, want 4", contract.NodeSlicesFreeMaxLabel, got)
	}
	got, err := contract.ParseNodeSlices(api.annotations[contract.NodeSlicesAnnotation])
	if err != nil || got.GPUs[0].Free != 3 {
		t.Fatalf("published %+v, %v", got, err)
	}
	ns.GPUs[0].Free = 0
	if err := p.Publish(ctx, ns, now); err != nil || api.patches != 2 {
		t.Fatalf("a change: %d patches, %v", api.patches, err)
	}
	// Someone removed it: the resync brings it back.
	delete(api.annotations, contract.NodeSlicesAnnotation)
	if err := p.Publish(ctx, ns, now.Add(p.Resync)); err != nil || api.annotations[contract.NodeSlicesAnnotation] == "" {
		t.Fatalf("resync: %v, %q", err, api.annotations[contract.NodeSlicesAnnotation])
	}
}

// A value that cannot be written whole removes the one there: a stale
// count would let the extender place pods where there is no room.
func TestPublishRemovesWhatItCannotReplace(t *testing.T) {
	api := &fakeNode{annotations: map[string]string{}}
	p := nodeslices.NewPublisher(api, "n", nil)
	ns := nodeslices.From(snapshot(), "nvidia.com/vgpu", contract.SpanFewest, nil)
	if err := p.Publish(context.Background(), ns, time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		ns.Holders = append(ns.Holders, contract.HolderKey(strings.Repeat("u", 36), "container-"+string(rune('a'+i%26))))
	}
	err := p.Publish(context.Background(), ns, time.Unix(2, 0))
	if !errors.Is(err, contract.ErrBadNodeSlices) {
		t.Fatalf("err %v, want ErrBadNodeSlices", err)
	}
	if v, ok := api.annotations[contract.NodeSlicesAnnotation]; ok {
		t.Fatalf("the stale value stayed: %.80s", v)
	}
	patches := api.patches
	_ = p.Publish(context.Background(), ns, time.Unix(3, 0))
	if api.patches != patches {
		t.Fatal("removed again on every sample")
	}
}
