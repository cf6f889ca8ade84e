package v1alpha1

import (
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API's group and version.
var GroupVersion = schema.GroupVersion{Group: "gpuslice.io", Version: "v1alpha1"}

// Resource is the GPUQuota resource.
var Resource = GroupVersion.WithResource("gpuquotas")

// AddToScheme registers GPUQuota and GPUQuotaList with a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &GPUQuota{}, &GPUQuotaList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// Budget sources.
const (
	// SourceBusy measures GPU-hours as the time the namespace's containers
	// kept their GPUs busy (gpuslice_container_gpu_busy_seconds_total).
	SourceBusy = "Busy"
	// SourceAllocated measures GPU-hours as the share of GPUs the
	// namespace held, used or not (slices x time).
	SourceAllocated = "Allocated"
)

// Admission modes: what holds new work back while a budget is spent.
const (
	// AdmissionResourceQuota: the controller's ResourceQuota caps slices
	// (maxSlices, maxClaimSlices) and, while the budget is spent, refuses
	// new GPU pods.
	AdmissionResourceQuota = "ResourceQuota"
	// AdmissionKueue: Kueue's ClusterQueues cap slices and the controller's
	// Kueue AdmissionCheck holds new Workloads back while the budget is
	// spent; a ResourceQuota at what is held exists only then, to stop pods
	// that skip Kueue.
	AdmissionKueue = "Kueue"
)

// Idle actions.
const (
	ActionNone     = "None"
	ActionAnnotate = "Annotate"
	ActionEvict    = "Evict"
)

// GPUQuota limits a namespace's GPU slices. At most one GPUQuota per
// namespace is enforced (the first by name).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:path=gpuquotas,singular=gpuquota,shortName=gq
// +kubebuilder:printcolumn:name="Max Slices",type=integer,JSONPath=`.spec.maxSlices`
// +kubebuilder:printcolumn:name="Used Slices",type=integer,JSONPath=`.status.usedSlices`
// +kubebuilder:printcolumn:name="Limit",type=integer,JSONPath=`.status.sliceLimit`
// +kubebuilder:printcolumn:name="GPU-Hours",type=string,JSONPath=`.status.usedGPUHours`
// +kubebuilder:printcolumn:name="Budget",type=number,JSONPath=`.spec.budget.gpuHours`
// +kubebuilder:printcolumn:name="Exhausted",type=string,JSONPath=`.status.conditions[?(@.type=="BudgetExhausted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type GPUQuota struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   GPUQuotaSpec   `json:"spec"`
	Status GPUQuotaStatus `json:"status,omitempty"`
}

// GPUQuotaList is a list of GPUQuotas.
//
// +kubebuilder:object:root=true
type GPUQuotaList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []GPUQuota `json:"items"`
}

// GPUQuotaSpec limits the namespace's GPU slices. At most one GPUQuota per
// namespace is enforced (the first by name).
type GPUQuotaSpec struct {
	// Slices the namespace's pods may hold at once (requests.nvidia.com/vgpu).
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxSlices *int64 `json:"maxSlices,omitempty"`
	// Slices the namespace's DRA claims may hold at once, on the device classes the controller is given (--dra-device-classes). A claim's slices are the larger of its compute and its memory in slices. Kubernetes quota counts claim devices, not capacity, so a claim the controller has not yet seen counts as a whole GPU: size this to at least one GPU's slices. Unset while maxSlices is set: no new claims.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxClaimSlices *int64 `json:"maxClaimSlices,omitempty"`
	// GPU-hours the namespace may use over a rolling window. Once used up,
	// no new GPU pods are admitted; running ones continue.
	// +optional
	Budget *Budget `json:"budget,omitempty"`
	// Pods whose GPU utilization stays below a ratio for a duration are idle.
	// +optional
	Idle *Idle `json:"idle,omitempty"`
	// What holds new work back. ResourceQuota: the controller's ResourceQuota caps slices and refuses new GPU pods while the budget is spent. Kueue: the namespace's work comes through Kueue, whose ClusterQueues cap slices (maxSlices and maxClaimSlices are refused); the controller's Kueue AdmissionCheck (--kueue-admission-check) holds new Workloads back while the budget is spent, a ResourceQuota at what is held then stops pods that skip Kueue, and idle pods are reclaimed through their Workloads, which Kueue requeues.
	// +kubebuilder:validation:Enum=ResourceQuota;Kueue
	// +kubebuilder:default=ResourceQuota
	// +optional
	Admission string `json:"admission,omitempty"`
}

// Budget is a GPU-hour budget over a rolling window.
type Budget struct {
	// +kubebuilder:validation:Minimum=0
	GPUHours float64 `json:"gpuHours"`
	// Rolling window, e.g. 24h or 168h (at least 1m).
	Window Duration `json:"window"`
	// Busy counts the GPU time the pods used (gpuslice_container_gpu_busy_seconds_total); Allocated counts the share of GPUs they held.
	// +kubebuilder:validation:Enum=Busy;Allocated
	// +kubebuilder:default=Busy
	// +optional
	Source string `json:"source,omitempty"`
}

// Idle is the idle-reclaim policy.
type Idle struct {
	// A pod whose SM utilization stays below this ratio of a GPU...
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:ExclusiveMinimum=true
	// +kubebuilder:validation:Maximum=1
	BelowUtilization float64 `json:"belowUtilization"`
	// How long a pod must stay below the ratio (at least 10s).
	For Duration `json:"for"`
	// Annotate marks idle pods gpuslice.io/idle-since; Evict evicts them through the Eviction API, respecting PodDisruptionBudgets.
	// +kubebuilder:validation:Enum=None;Annotate;Evict
	Action string `json:"action"`
	// Let pods opt out with the annotation gpuslice.io/idle-reclaim-opt-out=true.
	// +kubebuilder:default=false
	// +optional
	AllowOptOut bool `json:"allowOptOut,omitempty"`
}

// Duration is a time.Duration written as "24h" in JSON.
//
// +kubebuilder:validation:Type=string
// +kubebuilder:validation:Pattern=`^([0-9]+(ms|s|m|h))+$`
type Duration struct{ time.Duration }

// UnmarshalJSON reads "24h".
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) < 2 || b[0] != '"' {
		return fmt.Errorf("duration %s: want a string like \"24h\"", b)
	}
	v, err := time.ParseDuration(string(b[1 : len(b)-1]))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes "24h0m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

// Validate checks a spec beyond what the CRD's schema can.
func (s GPUQuotaSpec) Validate() error {
	if s.MaxSlices != nil && *s.MaxSlices < 0 {
		return fmt.Errorf("maxSlices %d is negative", *s.MaxSlices)
	}
	if s.MaxClaimSlices != nil && *s.MaxClaimSlices < 0 {
		return fmt.Errorf("maxClaimSlices %d is negative", *s.MaxClaimSlices)
	}
	switch s.Admission {
	case "", AdmissionResourceQuota:
	case AdmissionKueue:
		if s.MaxSlices != nil || s.MaxClaimSlices != nil {
			return errors.New("admission Kueue: the ClusterQueues' quotas cap slices there, not a ResourceQuota; remove maxSlices and maxClaimSlices")
		}
	default:
		return fmt.Errorf("admission %q: want ResourceQuota or Kueue", s.Admission)
	}
	if b := s.Budget; b != nil {
		if b.GPUHours < 0 || b.Window.Duration < time.Minute {
			return fmt.Errorf("budget needs gpuHours >= 0 and a window of at least 1m, got %g over %s", b.GPUHours, b.Window)
		}
		if b.Source != "" && b.Source != SourceBusy && b.Source != SourceAllocated {
			return fmt.Errorf("budget source %q: want Busy or Allocated", b.Source)
		}
	}
	if i := s.Idle; i != nil {
		if i.BelowUtilization <= 0 || i.BelowUtilization > 1 || i.For.Duration < 10*time.Second {
			return fmt.Errorf("idle needs belowUtilization in (0,1] and for >= 10s, got %g for %s", i.BelowUtilization, i.For)
		}
		switch i.Action {
		case ActionNone, ActionAnnotate, ActionEvict:
		default:
			return fmt.Errorf("idle action %q: want None, Annotate or Evict", i.Action)
		}
	}
	return nil
}

// GPUQuotaStatus is what gpu-quota-controller found and did.
type GPUQuotaStatus struct {
	// +optional
	UsedSlices *int64 `json:"usedSlices,omitempty"`
	// The hard limit the controller's ResourceQuota sets now.
	// +optional
	SliceLimit *int64 `json:"sliceLimit,omitempty"`
	// Slices the namespace's DRA claims hold: allocated claims as allocated, others as a whole GPU per device.
	// +optional
	UsedClaimSlices *int64 `json:"usedClaimSlices,omitempty"`
	// The hard limit on claim devices the controller's ResourceQuota sets now, per device class.
	// +optional
	ClaimDeviceLimits map[string]int64 `json:"claimDeviceLimits,omitempty"`
	// GPU-hours used over the budget's window.
	// +optional
	UsedGPUHours string `json:"usedGPUHours,omitempty"`
	// Pods found idle. Listed, empty or not, whenever the spec is valid.
	// +optional
	IdlePods []string `json:"idlePods"`
	// Pods old enough to judge whose idleness Prometheus cannot show ("pod: why"): missing, partial or invalid samples, or a blind agent. Never reclaimed.
	// +optional
	UnknownPods []string `json:"unknownPods"`
	// +optional
	LastEvaluationTime *metav1.Time `json:"lastEvaluationTime,omitempty"`
	// +optional
	Conditions []Condition `json:"conditions,omitempty"`
}

// ConditionStatus is True, False or Unknown.
//
// +kubebuilder:validation:Enum="True";"False";Unknown
type ConditionStatus string

// Condition is one aspect of the quota's state.
type Condition struct {
	Type   string          `json:"type"`
	Status ConditionStatus `json:"status"`
	// +optional
	Reason string `json:"reason,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
	// +optional
	LastTransitionTime *metav1.Time `json:"lastTransitionTime,omitempty"`
}
