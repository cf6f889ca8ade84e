// Package node is the agent's model of its node: the Snapshot that the
// sampler publishes and that enforcement, the exporter and the labels read,
// and Build, the pure accounting that turns one sample's readings (NVML,
// each GPU process's cgroup, the kubelet's assignments and checkpoint) and
// the previous state into the next snapshot. It does no I/O.
package node
