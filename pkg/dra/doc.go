// Package dra describes a node's GPUs to Dynamic Resource Allocation: the
// devices gpuslice's DRA driver publishes in ResourceSlices, each GPU one
// device that many claims share by consumable capacity (compute in slices,
// memory in slice-sized steps), with the attributes claims select on.
//
// Describing is a function of the layout and what NVML reported; preparing
// claims is not: the Preparer keeps a ledger against overcommit and writes
// each claim's CDI spec and its record of prepared claims to disk. The
// kubelet plugin that publishes the devices and calls the Preparer is built
// on it; docs/dra.md has the design and what each Kubernetes version
// supports.
package dra
