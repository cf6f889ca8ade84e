// Package node is the agent's model of its node, below every edge and loop
// package: the vocabulary (a process's cgroup, the kubelet's and the
// runtime's records as plain data, who holds what share of which GPU:
// Holding, HoldingsOf), the join that places GPU processes in containers
// (Join), Build, the accounting that turns one sample's readings and the
// previous state into the next Snapshot, and the Snapshot that the
// exporter, enforcement and the labels read.
//
// It does no I/O: the sampler reads NVML, /proc, the runtime's bundles and
// the kubelet's records (pkg/kubeletstate) and hands it plain data
// (internal/arch's TestPurePackages keeps it so).
package node
