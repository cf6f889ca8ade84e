package enforce

import "fmt"

// PodPolicyMode is what a pod's gpuslice.io/compute-policy annotation may
// do to the node's compute policy.
type PodPolicyMode string

const (
	// PodPoliciesAllow lets a pod choose burst or strict.
	PodPoliciesAllow PodPolicyMode = "allow"
	// PodPoliciesStricterOnly lets a pod choose strict on a burst node, and
	// nothing else: a tenant can only give up idle time. Default.
	PodPoliciesStricterOnly PodPolicyMode = "stricter-only"
	// PodPoliciesIgnore ignores the annotation.
	PodPoliciesIgnore PodPolicyMode = "ignore"
)

// ParsePodPolicyMode accepts allow, stricter-only and ignore; empty is
// stricter-only.
func ParsePodPolicyMode(s string) (PodPolicyMode, error) {
	switch PodPolicyMode(s) {
	case "", PodPoliciesStricterOnly:
		return PodPoliciesStricterOnly, nil
	case PodPoliciesAllow, PodPoliciesIgnore:
		return PodPolicyMode(s), nil
	}
	return "", fmt.Errorf("unknown pod compute policy mode %q (want allow, stricter-only or ignore)", s)
}

// Effective returns the policy a container is held to: the node's, or
// the pod's where the mode lets it choose that one.
func (m PodPolicyMode) Effective(node, pod Policy) Policy {
	switch {
	case pod == "" || m == PodPoliciesIgnore:
		return node
	case m == PodPoliciesAllow:
		return pod
	case pod == Strict:
		return Strict // stricter-only: strict is never looser than the node
	}
	return node
}

// UnauthorizedPolicy is what is done to a process in a pod that uses a GPU
// its container holds no slice of.
type UnauthorizedPolicy string

const (
	// UnauthorizedKill kills the process. Default: a process without slices
	// has no memory limit and no compute share, so it can starve every
	// tenant of the GPU, and freezing it would keep its memory held.
	UnauthorizedKill UnauthorizedPolicy = "kill"
	// UnauthorizedFreeze freezes the cgroup that holds it until the
	// process is gone (its pod deleted), keeping its memory held.
	UnauthorizedFreeze UnauthorizedPolicy = "freeze"
	// UnauthorizedLog only reports it.
	UnauthorizedLog UnauthorizedPolicy = "log"
)

// ParseUnauthorizedPolicy accepts kill, freeze and log; empty is kill.
func ParseUnauthorizedPolicy(s string) (UnauthorizedPolicy, error) {
	switch UnauthorizedPolicy(s) {
	case "", UnauthorizedKill:
		return UnauthorizedKill, nil
	case UnauthorizedFreeze, UnauthorizedLog:
		return UnauthorizedPolicy(s), nil
	}
	return "", fmt.Errorf("unknown unauthorized GPU use policy %q (want kill, freeze or log)", s)
}
