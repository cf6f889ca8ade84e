package dra

import (
	"regexp"
	"strconv"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// UnhealthyTaintKey taints a GPU that failed: new claims do not get it
// (NoSchedule), claims already prepared keep it. Its value says why:
// "xid-<n>", "lost", or NVML's reason.
const UnhealthyTaintKey = DriverName + "/unhealthy"

// notLabel matches what a label value, and so a taint's value, cannot hold.
var notLabel = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// TaintValue is why a GPU is tainted, as a label value.
func TaintValue(h nvml.Health) string {
	if h.XID != 0 {
		return "xid-" + strconv.FormatUint(h.XID, 10)
	}
	v := notLabel.ReplaceAllString(h.Reason, "-")
	if len(v) > 63 {
		v = v[:63]
	}
	for len(v) > 0 && !isAlnum(v[0]) {
		v = v[1:]
	}
	for len(v) > 0 && !isAlnum(v[len(v)-1]) {
		v = v[:len(v)-1]
	}
	if v == "" {
		v = "unhealthy"
	}
	return v
}

// Tainted returns a copy of devices where each GPU the health map (by
// UUID) says is unhealthy carries UnhealthyTaintKey with NoSchedule, and
// the others carry no taint of gpuslice's.
func Tainted(devices []resourceapi.Device, health map[string]nvml.Health) []resourceapi.Device {
	out := make([]resourceapi.Device, len(devices))
	for i, d := range devices {
		d.Taints = nil
		if uuid := d.Attributes[AttrUUID].StringValue; uuid != nil {
			if h, ok := health[*uuid]; ok && !h.Healthy {
				d.Taints = []resourceapi.DeviceTaint{{Key: UnhealthyTaintKey, Value: TaintValue(h), Effect: resourceapi.DeviceTaintEffectNoSchedule}}
			}
		}
		out[i] = d
	}
	return out
}
