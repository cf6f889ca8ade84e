package deviceplugin

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// TestResponsesAreBounded: a kubelet (or anything that can reach the
// socket) asking for ever new slice sets cannot grow the kept answers
// without bound, and a response no longer kept is still encoded in full.
func TestResponsesAreBounded(t *testing.T) {
	r := newResponses()
	c := newCodec(r)
	var first *pluginapi.AllocateResponse
	for i := range 3 * maxCachedResponses {
		resp := &pluginapi.AllocateResponse{ContainerResponses: []*pluginapi.ContainerAllocateResponse{{Envs: map[string]string{"N": fmt.Sprint(i)}}}}
		if first == nil {
			first = resp
		}
		if err := r.put(fmt.Sprint(i), &answer{resp: resp}); err != nil {
			t.Fatal(err)
		}
		if len(r.byRequest) > maxCachedResponses || len(r.byResp) > maxCachedResponses {
			t.Fatalf("%d answers kept after %d requests, more than %d", len(r.byRequest), i+1, maxCachedResponses)
		}
	}
	if _, kept := r.encoded(first); kept {
		t.Fatal("the first answer is still kept")
	}
	got, err := c.Marshal(first)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := proto.Marshal(first)
	if string(got.Materialize()) != string(want) {
		t.Error("a response no longer kept was not encoded in full")
	}
}

// TestRequestKeyIgnoresOrderNotContainers: the same slices in another order
// are the same request; the same slices split between containers are not.
func TestRequestKeyIgnoresOrderNotContainers(t *testing.T) {
	req := func(containers ...[]string) *pluginapi.AllocateRequest {
		r := &pluginapi.AllocateRequest{}
		for _, ids := range containers {
			r.ContainerRequests = append(r.ContainerRequests, &pluginapi.ContainerAllocateRequest{DevicesIds: ids})
		}
		return r
	}
	a := requestKey(req([]string{"g::1", "g::0"}))
	if b := requestKey(req([]string{"g::0", "g::1"})); a != b {
		t.Errorf("order changed the key: %q, %q", a, b)
	}
	if b := requestKey(req([]string{"g::0"}, []string{"g::1"})); a == b {
		t.Errorf("two containers share the key of one: %q", a)
	}
	for _, spelled := range [][]string{{"g::0,g::1"}, {"g::0", "g::1;"}, {"3:g::0", "g::1"}, {"g::04:g::1"}} {
		if b := requestKey(req(spelled)); a == b {
			t.Errorf("IDs %q spell the key of [g::0 g::1]: %q", spelled, a)
		}
	}
}
