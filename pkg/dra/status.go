package dra

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	metav1apply "k8s.io/client-go/applyconfigurations/meta/v1"
	resourceapply "k8s.io/client-go/applyconfigurations/resource/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// The conditions the driver sets on each of its devices in a claim's
// status: Prepared once the claim is prepared on the node; Enforced, from
// gpu-agent, whether the node holds the claim's containers to the share
// now (True), cannot (False: the reason says why), or cannot tell yet
// (Unknown: no container of the claim's runs, or the agent does not say).
const (
	ConditionPrepared = "Prepared"
	ConditionEnforced = "Enforced"
)

// Condition is one condition of a device's status.
type Condition struct {
	Type    string
	Status  metav1.ConditionStatus
	Reason  string
	Message string
	// Since is when Status last changed.
	Since metav1.Time
}

// PreparedCondition is the Prepared condition, true since since.
func PreparedCondition(since metav1.Time) Condition {
	return Condition{Type: ConditionPrepared, Status: metav1.ConditionTrue, Reason: "ClaimPrepared",
		Message: "prepared on the node; gpu-agent holds its containers to this share", Since: since}
}

// EnforcedCondition is the Enforced condition from gpu-agent's word on the
// claim (known false when it has none); Since is left to the caller.
func EnforcedCondition(e contract.ClaimEnforced, known bool) Condition {
	c := Condition{Type: ConditionEnforced}
	switch {
	case !known:
		c.Status, c.Reason = metav1.ConditionUnknown, "NotReported"
		c.Message = "no container holding the claim runs on the node yet, or gpu-agent --dra does not report"
		return c
	case e.State == contract.ClaimHeld:
		c.Status, c.Reason = metav1.ConditionTrue, "Enforced"
	case e.State == contract.ClaimHeldAtPodLevel:
		c.Status, c.Reason = metav1.ConditionTrue, "EnforcedAtPodLevel"
	case e.State == contract.ClaimEnforcementOff:
		c.Status, c.Reason = metav1.ConditionFalse, "EnforcementOff"
	default:
		c.Status, c.Reason = metav1.ConditionFalse, "NotEnforced"
	}
	c.Message = fmt.Sprintf("compute: %s; memory: %s; containers: %d", held(e.Compute, e.ComputeTier), held(e.Memory, e.MemoryTier), e.Containers)
	return c
}

// held says how one resource is held: its reason, and its tier when held.
func held(reason, tier string) string {
	if tier == "" {
		return reason
	}
	return reason + " by " + tier
}

// ShareStatus is what a claim holds of one GPU, as the driver writes it in
// the claim's status (status.devices[].data), so that `kubectl get
// resourceclaim -o yaml` shows the limits the node holds the claim's
// containers to, split among them when several share it.
type ShareStatus struct {
	UUID           string  `json:"uuid"`
	Index          int     `json:"index"`
	Slices         int     `json:"slices"`
	SlicesTotal    int     `json:"slicesTotal"`
	ComputeRatio   float64 `json:"computeRatio"`
	MemoryBytes    uint64  `json:"memoryBytes"`
	MemoryCapacity uint64  `json:"memoryCapacity"`
	// Admin is admin access (monitoring), which holds nothing.
	Admin bool `json:"admin,omitempty"`
}

// DeviceStatuses is the status of each of the driver's devices in the
// claim's allocation on pool, from what the claim was granted: the
// share of the device's GPU, and the Prepared condition. Results of other
// drivers or pools, or whose GPU no grant names, get none.
func DeviceStatuses(claim *resourceapi.ResourceClaim, pool string, grants []Grant, conditions ...Condition) []*resourceapply.AllocatedDeviceStatusApplyConfiguration {
	if claim.Status.Allocation == nil {
		return nil
	}
	byIndex := make(map[int]Grant, len(grants))
	for _, g := range grants {
		byIndex[g.Index] = g
	}
	var out []*resourceapply.AllocatedDeviceStatusApplyConfiguration
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != DriverName || r.Pool != pool {
			continue
		}
		index, ok := gpuIndexOf(r.Device)
		if !ok {
			continue
		}
		g, ok := byIndex[index]
		if !ok {
			continue
		}
		data, err := json.Marshal(ShareStatus{UUID: g.UUID, Index: g.Index, Slices: g.Slices, SlicesTotal: g.SlicesTotal,
			ComputeRatio: g.ComputeRatio, MemoryBytes: g.MemoryBytes, MemoryCapacity: g.MemoryCapacity, Admin: g.Admin})
		if err != nil {
			continue
		}
		s := resourceapply.AllocatedDeviceStatus().WithDriver(r.Driver).WithPool(r.Pool).WithDevice(r.Device).
			WithData(runtime.RawExtension{Raw: data})
		for _, c := range conditions {
			s = s.WithConditions(metav1apply.Condition().WithType(c.Type).WithStatus(c.Status).WithReason(c.Reason).
				WithMessage(c.Message).WithLastTransitionTime(c.Since).WithObservedGeneration(claim.Generation))
		}
		if r.ShareID != nil {
			s = s.WithShareID(string(*r.ShareID))
		}
		out = append(out, s)
	}
	return out
}

// gpuIndexOf is the GPU index a device name of the driver's stands for:
// "gpu-<i>" or "gpu-<i>-slice-<j>".
func gpuIndexOf(device string) (int, bool) {
	rest, ok := strings.CutPrefix(device, "gpu-")
	if !ok {
		return 0, false
	}
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		rest = rest[:i]
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n >= 0
}
