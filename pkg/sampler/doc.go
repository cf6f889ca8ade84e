// Package sampler reads the node's GPU state in the background (NVML
// samples and processes, the kubelet's pod-resources and checkpoint, each
// process's cgroup) and keeps the latest result as an immutable Snapshot,
// so that metric scrapes never call NVML or the kubelet.
package sampler
