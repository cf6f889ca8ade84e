// Package enforce keeps each container inside the compute share its
// slices give it, from outside the container: a feedback controller per
// GPU decides how much of each period a container may run, and a throttle
// freezes the container's cgroup (cgroup v2 cgroup.freeze, or the v1
// freezer) for the rest. Nothing inside the container can opt out.
//
// Every container it froze is recorded in a state file, so a restarted
// agent thaws whatever a killed one left frozen.
package enforce
