// Package dra describes a node's GPUs to Dynamic Resource Allocation: the
// devices gpuslice's DRA driver publishes in ResourceSlices, each GPU one
// device that many claims share by consumable capacity (compute in slices,
// memory in slice-sized steps), with the attributes claims select on.
//
// It is pure: the layout and what NVML reported in, API objects out. The
// kubelet plugin that publishes them and prepares claims is built on it;
// docs/dra.md has the design and what each Kubernetes version supports.
package dra
