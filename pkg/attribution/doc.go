// Package attribution maps a process to the Kubernetes container it runs
// in, from the process's cgroup membership (<proc-root>/<pid>/cgroup): cgroup
// v1, v2 and hybrid hosts; the kubelet's cgroupfs and systemd drivers;
// containerd, CRI-O and docker naming; guaranteed, burstable and besteffort
// pods. The cgroup path is set by the runtime outside the container, so a
// process cannot claim another container's identity.
package attribution
