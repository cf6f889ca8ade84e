package dra

import (
	"testing"

	resourceapi "k8s.io/api/resource/v1"
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

// TestTaintPolicy: a lost GPU and a fatal XID take the Fatal effect, any
// other unhealthy GPU the Recoverable one, a healthy GPU none; the effect
// follows what Tainted is told is fatal.
func TestTaintPolicy(t *testing.T) {
	t.Parallel()
	p := DefaultTaintPolicy()
	for _, tc := range []struct {
		h     nvml.Health
		fatal bool
	}{
		{nvml.Health{Reason: nvml.ReasonLost}, true},
		{nvml.Health{Reason: nvml.ReasonXID, XID: 79}, true},
		{nvml.Health{Reason: nvml.ReasonXID, XID: 48}, true},
		{nvml.Health{Reason: nvml.ReasonXID, XID: 94}, false},
		{nvml.Health{Reason: "NVML error"}, false},
		{nvml.Health{Healthy: true, Reason: nvml.ReasonRecovered}, false},
	} {
		if got := p.IsFatal(tc.h); got != tc.fatal {
			t.Errorf("IsFatal(%+v) = %t, want %t", tc.h, got, tc.fatal)
		}
	}
	uuid := func(u string) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
		return map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{AttrUUID: {StringValue: &u}}
	}
	devices := []resourceapi.Device{{Name: "gpu-0", Attributes: uuid("a")}, {Name: "gpu-1", Attributes: uuid("b")}, {Name: "gpu-2", Attributes: uuid("c")}}
	health := map[string]nvml.Health{"a": {Healthy: true}, "b": {Reason: nvml.ReasonXID, XID: 94}, "c": {Reason: nvml.ReasonXID, XID: 94}}
	got := p.Tainted(devices, health, map[string]bool{"c": true})
	effects := []resourceapi.DeviceTaintEffect{"", resourceapi.DeviceTaintEffectNoSchedule, resourceapi.DeviceTaintEffectNoExecute}
	for i, d := range got {
		var e resourceapi.DeviceTaintEffect
		if len(d.Taints) == 1 {
			e = d.Taints[0].Effect
		}
		if e != effects[i] || len(d.Taints) > 1 {
			t.Errorf("%s: taints %+v, want effect %q", d.Name, d.Taints, effects[i])
		}
	}
	for _, s := range []string{"NoExecute", "NoSchedule", "None"} {
		if e, err := ParseTaintEffect(s); err != nil || string(e) != s {
			t.Errorf("ParseTaintEffect(%q) = %q, %v", s, e, err)
		}
	}
	if _, err := ParseTaintEffect("PreferNoSchedule"); err == nil {
		t.Error("PreferNoSchedule, not valid on devices, was accepted")
	}
}
