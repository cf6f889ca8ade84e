package deviceplugin_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// twoByTwo starts a plugin on two GPUs of 4 slices, then has the kubelet
// admit two 2-slice containers, spread, leaving 2 free on each GPU.
func twoByTwo(t *testing.T, span string, holdBack time.Duration) (*env, *kubeletstub.Plugin) {
	t.Helper()
	e := newEnv(t, setup{node: fakegpu.PresetConfig("A100-40GB", 2), configure: func(o *deviceplugin.Options) {
		o.Placement = vgpu.Spread
		o.Span = span
		o.SpanHoldBack, o.SpanHoldBackMax = holdBack, 4*holdBack
	}})
	p := e.waitPlugin(t)
	for _, pod := range []string{"a", "b"} {
		if _, err := p.Allocate(ctxT(t), pod, "main", 2); err != nil {
			t.Fatal(err)
		}
	}
	return e, p
}

func gpusOf(t *testing.T, ids []string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, id := range ids {
		s, err := vgpu.ParseSliceID(id)
		if err != nil {
			t.Fatal(err)
		}
		out[s.UUID] = true
	}
	return out
}

func healthyCount(p *kubeletstub.Plugin) int {
	n := 0
	for _, d := range p.Devices() {
		if d.Health == pluginapi.Healthy {
			n++
		}
	}
	return n
}

// --span=fewest (the default) spans a request no one GPU holds.
func TestSpanFewestSpans(t *testing.T) {
	t.Parallel()
	_, p := twoByTwo(t, contract.SpanFewest, time.Minute)
	a, err := p.Allocate(ctxT(t), "c", "main", 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(gpusOf(t, a.DeviceIDs)) != 2 {
		t.Fatalf("3 slices on 2+2 free: %v, want them spread over both GPUs", a.DeviceIDs)
	}
}

// --span=never refuses it, and holds back enough free slices that the
// node's free total (what the scheduler sees) drops below the refused
// size, so the pod is not sent straight back; smaller requests still fit,
// and the slices come back when the hold-back ends.
func TestSpanNeverRefusesAndHoldsBack(t *testing.T) {
	t.Parallel()
	holdBack := 2 * time.Second
	_, p := twoByTwo(t, contract.SpanNever, holdBack)
	_, err := p.Allocate(ctxT(t), "c", "main", 3)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no GPU on this node has 3 free slices") {
		t.Fatalf("3 slices on 2+2 free with --span=never: %v, want FailedPrecondition naming per-GPU fit", err)
	}
	// 8 slices, 4 held by pods, 2 held back: 2 free, fewer than 3.
	if err := p.WaitHealthy(ctxT(t), 6); err != nil {
		t.Fatalf("held back: %d healthy, want 6: %v", healthyCount(p), err)
	}
	a, err := p.Allocate(ctxT(t), "d", "main", 2)
	if err != nil {
		t.Fatalf("a request one GPU holds, during the hold-back: %v", err)
	}
	if len(gpusOf(t, a.DeviceIDs)) != 1 {
		t.Fatalf("2 slices over %v", a.DeviceIDs)
	}
	if err := p.WaitHealthy(ctxT(t), 8); err != nil {
		t.Fatalf("after the hold-back: %d healthy, want 8: %v", healthyCount(p), err)
	}
}

// Allocate refuses slices of two GPUs on a --span=never node, whatever
// the kubelet picked.
func TestSpanNeverAllocateRefusesSpanningIDs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{configure: func(o *deviceplugin.Options) { o.Span = contract.SpanNever }})
	p := e.waitPlugin(t)
	ids := []string{e.devs[0].UUID + "::0", e.devs[1].UUID + "::0"}
	_, err := p.Client().Allocate(ctxT(t), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "more than one GPU") {
		t.Fatalf("Allocate(%v) = %v, want FailedPrecondition", ids, err)
	}
	if _, err := p.Client().Allocate(ctxT(t), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids[:1]}}}); err != nil {
		t.Fatalf("one GPU's slice: %v", err)
	}
}

func TestSpanOptionsValidate(t *testing.T) {
	o := deviceplugin.DefaultOptions()
	o.Span = "always"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "always") {
		t.Fatalf("span always: %v", err)
	}
	o = deviceplugin.DefaultOptions()
	o.SpanHoldBack = time.Hour
	if err := o.Validate(); err == nil {
		t.Fatal("a hold-back longer than its bound passed")
	}
}

// A hold-back ends as soon as one GPU has room for the refused request,
// and each start and end is told with the slices offered Healthy.
func TestSpanHoldBackEndsWhenAGPUHasRoom(t *testing.T) {
	t.Parallel()
	e, p := twoByTwo(t, contract.SpanNever, time.Hour)
	offered := make(chan int, 4)
	e.plugin.OnOffered(func(n int) { offered <- n })
	if _, err := p.Allocate(ctxT(t), "c", "main", 3); err == nil {
		t.Fatal("3 slices on 2+2 free were allocated")
	}
	if err := p.WaitHealthy(ctxT(t), 6); err != nil {
		t.Fatal(err)
	}
	if n := <-offered; n != 6 {
		t.Fatalf("told %d offered at the hold-back's start, want 6", n)
	}
	// Two free on each GPU: still no room for 3.
	e.plugin.Room(map[string]int{e.devs[0].UUID: 2, e.devs[1].UUID: 2})
	if n, _ := e.plugin.HeldBack(); n != 2 {
		t.Fatalf("%d held back after a sample without room, want 2", n)
	}
	e.plugin.Room(map[string]int{e.devs[0].UUID: 4, e.devs[1].UUID: 2})
	if err := p.WaitHealthy(ctxT(t), 8); err != nil {
		t.Fatalf("a GPU with room for 3: %d healthy, want 8: %v", healthyCount(p), err)
	}
	if n := <-offered; n != 8 {
		t.Fatalf("told %d offered at the hold-back's end, want 8", n)
	}
}
