// Package host reads, on the node, where a process runs: its cgroup
// membership (<proc-root>/<pid>/cgroup, resolved through the agent's cgroup
// namespace) on cgroup v1, v2 and hybrid hosts, with the kubelet's cgroupfs
// and systemd drivers and containerd, CRI-O and docker naming, remembered
// by PID and start time; and what the container runtime recorded of each
// container (its OCI bundle's annotations). The cgroup path is set by the
// runtime outside the container, so a process cannot claim another
// container's identity. It hands pkg/node plain data (node.Cgroup,
// node.RuntimeContainer); the join is node.Join.
package host
