package dra

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// UnhealthyTaintKey taints a GPU that failed, with the effect its cause
// takes (TaintPolicy): new claims do not get it, and with NoExecute the
// pods whose claims use it are evicted. Its value says why: "xid-<n>",
// "lost", or NVML's reason.
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

// TaintPolicy is the effect gpuslice's taint takes on an unhealthy GPU's
// device, by what made it unhealthy.
type TaintPolicy struct {
	// Fatal is the effect on a GPU lost from the bus or that reported an
	// XID in FatalXIDs since it was last healthy. NoExecute makes the
	// device taint eviction controller evict the pods whose claims use it.
	Fatal resourceapi.DeviceTaintEffect
	// Recoverable is the effect on any other unhealthy GPU: NoSchedule
	// keeps new claims off it and lets the pods on it run on.
	Recoverable resourceapi.DeviceTaintEffect
	// FatalXIDs are the XIDs that make a GPU's taint Fatal.
	FatalXIDs []uint64
}

// DefaultTaintPolicy is NoExecute for a lost GPU or a fatal XID
// (nvml.DefaultFatalXIDs), NoSchedule for the rest.
func DefaultTaintPolicy() TaintPolicy {
	return TaintPolicy{Fatal: resourceapi.DeviceTaintEffectNoExecute, Recoverable: resourceapi.DeviceTaintEffectNoSchedule,
		FatalXIDs: append([]uint64(nil), nvml.DefaultFatalXIDs...)}
}

// ParseTaintEffect reads NoExecute, NoSchedule or None.
func ParseTaintEffect(s string) (resourceapi.DeviceTaintEffect, error) {
	switch e := resourceapi.DeviceTaintEffect(s); e {
	case resourceapi.DeviceTaintEffectNoExecute, resourceapi.DeviceTaintEffectNoSchedule, resourceapi.DeviceTaintEffectNone:
		return e, nil
	}
	return "", fmt.Errorf("taint effect %q: want NoExecute, NoSchedule or None", s)
}

// IsFatal reports whether a report makes its GPU's taint Fatal: the GPU
// was lost, or reported one of FatalXIDs.
func (p TaintPolicy) IsFatal(h nvml.Health) bool {
	if h.Healthy {
		return false
	}
	return h.Reason == nvml.ReasonLost || (h.XID != 0 && slices.Contains(p.FatalXIDs, h.XID))
}

// Tainted returns a copy of devices where each GPU the health map (by
// UUID) says is unhealthy carries UnhealthyTaintKey, with the Fatal effect
// where fatal (by UUID) says so and the Recoverable one otherwise; the
// others carry no taint of gpuslice's.
func (p TaintPolicy) Tainted(devices []resourceapi.Device, health map[string]nvml.Health, fatal map[string]bool) []resourceapi.Device {
	out := make([]resourceapi.Device, len(devices))
	for i, d := range devices {
		d.Taints = nil
		if h, uuid, ok := DeviceHealth(d, health); ok && !h.Healthy {
			effect := p.Recoverable
			if fatal[uuid] {
				effect = p.Fatal
			}
			d.Taints = []resourceapi.DeviceTaint{{Key: UnhealthyTaintKey, Value: TaintValue(h), Effect: effect}}
		}
		out[i] = d
	}
	return out
}

// DeviceHealth is a device's health from the reports by UUID, and the
// UUID whose report it is: a GPU's own; for a MIG instance its own when
// it is unhealthy (an XID the driver put on it), else its GPU's, which it
// shares. ok is false when no report names either.
func DeviceHealth(d resourceapi.Device, health map[string]nvml.Health) (h nvml.Health, uuid string, ok bool) {
	own := d.Attributes[AttrUUID].StringValue
	if own != nil {
		if h, ok = health[*own]; ok && !h.Healthy {
			return h, *own, true
		}
	}
	if parent := d.Attributes[AttrParentUUID].StringValue; parent != nil {
		if ph, pok := health[*parent]; pok {
			return ph, *parent, true
		}
	}
	if own == nil {
		return nvml.Health{}, "", false
	}
	return h, *own, ok
}
