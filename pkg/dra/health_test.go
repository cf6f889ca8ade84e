package dra

import (
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

func TestTaintValue(t *testing.T) {
	t.Parallel()
	for h, want := range map[nvml.Health]string{
		{XID: 79, Reason: "xid"}:          "xid-79",
		{Reason: nvml.ReasonLost}:         "lost",
		{Reason: "GPU fell off the bus!"}: "GPU-fell-off-the-bus",
		{Reason: "--"}:                    "unhealthy",
		{Reason: ""}:                      "unhealthy",
		{Reason: "_a_"}:                   "a",
	} {
		if got := TaintValue(h); got != want {
			t.Errorf("TaintValue(%+v) = %q, want %q", h, got, want)
		}
	}
}

// FuzzTaintValue: whatever NVML's reason, the taint's value is a label
// value, which the API server requires.
func FuzzTaintValue(f *testing.F) {
	f.Add("xid", uint64(0))
	f.Add("a very long reason that goes on and on and on past sixty-three characters of text", uint64(0))
	f.Fuzz(func(t *testing.T, reason string, xid uint64) {
		v := TaintValue(nvml.Health{Reason: reason, XID: xid})
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 || v == "" {
			t.Fatalf("TaintValue(%q, %d) = %q: %v", reason, xid, v, errs)
		}
	})
}
