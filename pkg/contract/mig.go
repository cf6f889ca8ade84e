package contract

import "strings"

// MIGResourcePrefix begins the resource name of each MIG profile under
// the mixed strategy, as NVIDIA's device plugin names them.
const MIGResourcePrefix = "nvidia.com/mig-"

// MIGSingleResource is the resource every MIG instance is offered under
// with the single strategy.
const MIGSingleResource = "nvidia.com/gpu"

// MIGResource is the mixed strategy's resource name for a MIG profile:
// "nvidia.com/mig-1g.10gb". A '+' (as in "1g.10gb+me") cannot be part of
// a resource or label name, so it becomes '.', as NVIDIA's device plugin
// writes it.
func MIGResource(profile string) string {
	return MIGResourcePrefix + strings.ReplaceAll(profile, "+", ".")
}
