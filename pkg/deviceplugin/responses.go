package deviceplugin

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	protobuf "google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// maxCachedResponses bounds the responses kept: a node has few distinct
// slice sets in use at a time, and a kubelet asking for many different
// ones only refills the cache.
const maxCachedResponses = 1024

// answer is one Allocate response, built and encoded once for a set of
// slice IDs, with the GPUs its health check needs.
type answer struct {
	resp    *pluginapi.AllocateResponse
	encoded []byte
	slices  [][]vgpu.SliceID // per container request, the slices it holds
}

// responses keeps Allocate's answers by request, so that a request seen
// before costs a map lookup and no encoding: the response is a pure
// function of the slice IDs and the plugin's options, which do not change
// while it runs. Health is not part of it and is checked on every call.
type responses struct {
	mu        sync.Mutex
	byRequest map[string]*answer
	byResp    map[*pluginapi.AllocateResponse][]byte
}

func newResponses() *responses {
	return &responses{byRequest: map[string]*answer{}, byResp: map[*pluginapi.AllocateResponse][]byte{}}
}

// requestKey names a request by its containers' slice IDs, each sorted.
// Every ID is written with its length, so no ID (valid or not) can spell
// another request's key.
func requestKey(req *pluginapi.AllocateRequest) string {
	var b strings.Builder
	for _, c := range req.GetContainerRequests() {
		ids := slices.Clone(c.GetDevicesIds())
		slices.Sort(ids)
		for _, id := range ids {
			b.WriteString(strconv.Itoa(len(id)))
			b.WriteByte(':')
			b.WriteString(id)
		}
		b.WriteByte(';')
	}
	return b.String()
}

func (r *responses) get(key string) *answer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byRequest[key]
}

// put encodes a new answer and keeps it, dropping every kept one when
// full.
func (r *responses) put(key string, a *answer) error {
	b, err := protobuf.Marshal(a.resp)
	if err != nil {
		return fmt.Errorf("encode allocate response: %w", err)
	}
	a.encoded = b
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.byRequest) >= maxCachedResponses {
		clear(r.byRequest)
		clear(r.byResp)
	}
	r.byRequest[key] = a
	r.byResp[a.resp] = b
	return nil
}

func (r *responses) encoded(resp *pluginapi.AllocateResponse) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.byResp[resp]
	return b, ok
}

// codec is gRPC's protobuf codec, except that it sends a kept Allocate
// response as the bytes encoded when it was built.
type codec struct {
	encoding.CodecV2
	kept *responses
}

func newCodec(kept *responses) codec {
	return codec{CodecV2: encoding.GetCodecV2(proto.Name), kept: kept}
}

// Marshal encodes v, or hands out the bytes kept for it.
func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if resp, ok := v.(*pluginapi.AllocateResponse); ok {
		if b, ok := c.kept.encoded(resp); ok {
			return mem.BufferSlice{mem.SliceBuffer(b)}, nil
		}
	}
	return c.CodecV2.Marshal(v)
}
