package deviceplugin_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
)

// TestKeptResponsesStillCheckHealth: Allocate keeps the response it built
// for a set of slices and sends the bytes it encoded then. The attack is a
// request seen before, repeated after its GPU failed: the kept answer must
// not hand the failed GPU out. And what goes over the wire must be what a
// fresh encoding would send, whatever order the kubelet lists the IDs in.
func TestKeptResponsesStillCheckHealth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	p, err := e.kubelet.WaitPlugin(ctxT(t), resource)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{e.devs[1].UUID + "::2", e.devs[1].UUID + "::0", e.devs[2].UUID + "::1"}
	ask := func(ids ...string) (*pluginapi.AllocateResponse, error) {
		return p.Client().Allocate(ctxT(t), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
	}
	first, err := ask(ids...)
	if err != nil {
		t.Fatal(err)
	}
	// Served directly, without transport: a response built afresh.
	fresh, err := e.plugin.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
	if err != nil {
		t.Fatal(err)
	}
	again, err := ask(ids[2], ids[0], ids[1])
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string]*pluginapi.AllocateResponse{"first": first, "reordered": again} {
		if !proto.Equal(got, fresh) {
			t.Errorf("%s answer over gRPC = %v, want %v", name, got, fresh)
		}
	}
	if got := first.ContainerResponses[0].Envs["NVIDIA_VISIBLE_DEVICES"]; got != e.devs[1].UUID+","+e.devs[2].UUID {
		t.Errorf("NVIDIA_VISIBLE_DEVICES = %q", got)
	}

	if err := e.node.InjectXID(1, 79); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = ask(ids...)
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), ids[0]) {
		t.Fatalf("the kept request after GPU 1 failed = %v, want FailedPrecondition naming %s", err, ids[0])
	}
	// GPU 2's slice alone is still served, and bad requests still fail.
	if _, err := ask(ids[2]); err != nil {
		t.Errorf("slice on the healthy GPU: %v", err)
	}
	if _, err := ask(ids[2], ids[2]); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a slice asked twice = %v, want InvalidArgument", err)
	}
}

// TestAllocateRefusesGPUsDRAHolds: with DRA claims on GPU 1, slices of it
// are refused (even an answer kept from before the claims), slices of
// another GPU are served, and nothing is served while which GPUs DRA
// holds cannot be told.
func TestAllocateRefusesGPUsDRAHolds(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	held, heldErr := map[string]bool{}, error(nil)
	e := newEnv(t, setup{configure: func(o *deviceplugin.Options) {
		o.DRAGPUs = func() (map[string]bool, error) { mu.Lock(); defer mu.Unlock(); return held, heldErr }
	}})
	p, err := e.kubelet.WaitPlugin(ctxT(t), resource)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(ids ...string) error {
		_, err := p.Client().Allocate(ctxT(t), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
		return err
	}
	onOne, onTwo := e.devs[1].UUID+"::0", e.devs[2].UUID+"::0"
	if err := ask(onOne); err != nil {
		t.Fatalf("before any claim: %v", err)
	}
	mu.Lock()
	held = map[string]bool{e.devs[1].UUID: true}
	mu.Unlock()
	if err := ask(onOne); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "DRA claims") {
		t.Errorf("a slice of a GPU DRA claims hold: %v, want FailedPrecondition", err)
	}
	if err := ask(onTwo); err != nil {
		t.Errorf("a slice of another GPU: %v", err)
	}
	mu.Lock()
	heldErr = errors.New("record unreadable")
	mu.Unlock()
	if err := ask(onTwo); status.Code(err) != codes.Unavailable {
		t.Errorf("while DRA's holdings are unknown: %v, want Unavailable", err)
	}
}
