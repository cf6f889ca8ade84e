package contract_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

func TestNodeSlicesRoundTrip(t *testing.T) {
	ns := contract.NodeSlices{Version: 1, Resource: "nvidia.com/vgpu", Span: contract.SpanNever,
		GPUs:    []contract.GPUFree{{UUID: "GPU-a", Index: 0, Slices: 4, Free: 2}, {UUID: "GPU-b", Index: 1, Slices: 4, Free: 0}},
		Holders: []string{contract.HolderKey("uid-1", "main")}}
	s, err := ns.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := contract.ParseNodeSlices(s)
	if err != nil {
		t.Fatal(err)
	}
	if got.GPUs[0].Free != 2 || got.Span != contract.SpanNever || got.Holders[0] != "uid-1/main" {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestParseNodeSlicesRefuses(t *testing.T) {
	for name, s := range map[string]string{
		"not json":       "{",
		"other version":  `{"v":2,"resource":"r/x","span":"fewest","gpus":[]}`,
		"no resource":    `{"v":1,"span":"fewest","gpus":[]}`,
		"bad span":       `{"v":1,"resource":"r/x","span":"always","gpus":[]}`,
		"free > slices":  `{"v":1,"resource":"r/x","span":"fewest","gpus":[{"uuid":"GPU-a","index":0,"slices":4,"free":5}]}`,
		"negative free":  `{"v":1,"resource":"r/x","span":"fewest","gpus":[{"uuid":"GPU-a","index":0,"slices":4,"free":-1}]}`,
		"GPU twice":      `{"v":1,"resource":"r/x","span":"fewest","gpus":[{"uuid":"GPU-a","index":0,"slices":4,"free":1},{"uuid":"GPU-a","index":1,"slices":4,"free":1}]}`,
		"unknown field":  `{"v":1,"resource":"r/x","span":"fewest","gpus":[],"extra":1}`,
		"trailing data":  `{"v":1,"resource":"r/x","span":"fewest","gpus":[]} {}`,
		"over the bound": `{"v":1,"resource":"r/x","span":"fewest","gpus":[],"holders":["` + strings.Repeat("x", contract.MaxNodeSlicesBytes) + `"]}`,
	} {
		if _, err := contract.ParseNodeSlices(s); !errors.Is(err, contract.ErrBadNodeSlices) {
			t.Errorf("%s: err %v, want ErrBadNodeSlices", name, err)
		}
	}
}

func FuzzParseNodeSlices(f *testing.F) {
	f.Add(`{"v":1,"resource":"nvidia.com/vgpu","span":"fewest","gpus":[{"uuid":"GPU-a","index":0,"slices":4,"free":2}],"holders":["u/c"]}`)
	f.Add(`{"v":1}`)
	f.Fuzz(func(t *testing.T, s string) {
		ns, err := contract.ParseNodeSlices(s)
		if err != nil {
			return
		}
		// What parses is what the agent could have written.
		out, err := ns.Marshal()
		if err != nil {
			t.Fatalf("parsed but does not marshal: %v", err)
		}
		if _, err := contract.ParseNodeSlices(out); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
	})
}
