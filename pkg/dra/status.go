package dra

import (
	"encoding/json"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	metav1apply "k8s.io/client-go/applyconfigurations/meta/v1"
	resourceapply "k8s.io/client-go/applyconfigurations/resource/v1"
)

// ConditionPrepared is the condition the driver sets on each of its
// devices in a claim's status once the claim is prepared on the node.
const ConditionPrepared = "Prepared"

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
func DeviceStatuses(claim *resourceapi.ResourceClaim, pool string, grants []Grant, now metav1.Time) []*resourceapply.AllocatedDeviceStatusApplyConfiguration {
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
			WithData(runtime.RawExtension{Raw: data}).
			WithConditions(metav1apply.Condition().WithType(ConditionPrepared).WithStatus(metav1.ConditionTrue).WithReason("ClaimPrepared").
				WithMessage("prepared on the node; gpu-agent holds its containers to this share").WithLastTransitionTime(now).WithObservedGeneration(claim.Generation))
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
