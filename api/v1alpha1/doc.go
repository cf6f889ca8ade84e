// Package v1alpha1 is the gpuslice.io/v1alpha1 API: GPUQuota, per-namespace
// GPU slice caps, measured GPU-hour budgets and idle reclaim, enforced by
// gpu-quota-controller. The CRD in deployments/crds and the chart is
// generated from these types by controller-gen (make generate); make verify
// fails when it is stale.
//
// +kubebuilder:object:generate=true
// +groupName=gpuslice.io
package v1alpha1
