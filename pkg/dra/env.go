package dra

import (
	"errors"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// ErrMixedAdmin reports a claim that holds some GPUs with admin access
// and others as shares: one container environment cannot say both.
var ErrMixedAdmin = errors.New("claim mixes admin access and shares")

// Env is the environment a container of a claim gets: the same contract
// as in device-plugin mode (NVIDIA_VISIBLE_DEVICES and the per-GPU
// GPUSLICE_* lists), without slice IDs, which DRA does not have. A claim
// with admin access only (monitoring) sees its GPUs and is told no
// limits.
func Env(grants []Grant) (map[string]string, error) {
	admin := 0
	for _, g := range grants {
		if g.Admin {
			admin++
		}
	}
	switch {
	case admin == len(grants):
		uuids := make([]string, len(grants))
		for i, g := range grants {
			uuids[i] = g.UUID
		}
		return map[string]string{contract.EnvVisibleDevices: strings.Join(uuids, ",")}, nil
	case admin > 0:
		return nil, ErrMixedAdmin
	}
	out := make([]contract.Grant, len(grants))
	for i, g := range grants {
		out[i] = contract.Grant{UUID: g.UUID, Slices: g.Slices, MemoryBytes: g.MemoryBytes, ComputeRatio: g.ComputeRatio}
	}
	return contract.GrantEnv(out), nil
}
