package contract

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseGrants reads back, from the environment Allocate gave a container
// (as the kubelet recorded it), what the container holds of each GPU.
// The per-GPU lists must be as long as NVIDIA_VISIBLE_DEVICES and hold
// positive slice counts, memory in bytes and ratios in (0, 1]; anything
// else is an error, and nothing is returned.
func ParseGrants(envs map[string]string) ([]Grant, error) {
	uuids := strings.Split(envs[EnvVisibleDevices], ",")
	if envs[EnvVisibleDevices] == "" {
		return nil, fmt.Errorf("no %s", EnvVisibleDevices)
	}
	lists := map[string][]string{}
	for _, name := range []string{EnvSlices, EnvMemoryLimit, EnvComputeLimit} {
		lists[name] = strings.Split(envs[name], ",")
		if len(lists[name]) != len(uuids) {
			return nil, fmt.Errorf("%s has %d values for %d GPUs", name, len(lists[name]), len(uuids))
		}
	}
	out := make([]Grant, len(uuids))
	seen := map[string]bool{}
	for i, uuid := range uuids {
		if uuid == "" || seen[uuid] {
			return nil, fmt.Errorf("%s: GPU %d is empty or repeated", EnvVisibleDevices, i)
		}
		seen[uuid] = true
		slices, err := strconv.Atoi(lists[EnvSlices][i])
		if err != nil || slices <= 0 {
			return nil, fmt.Errorf("%s: %q is not a positive count", EnvSlices, lists[EnvSlices][i])
		}
		mem, err := strconv.ParseUint(lists[EnvMemoryLimit][i], 10, 64)
		if err != nil || mem == 0 {
			return nil, fmt.Errorf("%s: %q is not a positive byte count", EnvMemoryLimit, lists[EnvMemoryLimit][i])
		}
		ratio, err := strconv.ParseFloat(lists[EnvComputeLimit][i], 64)
		if err != nil || !(ratio > 0 && ratio <= 1) {
			return nil, fmt.Errorf("%s: %q is not a ratio in (0, 1]", EnvComputeLimit, lists[EnvComputeLimit][i])
		}
		out[i] = Grant{UUID: uuid, Slices: slices, MemoryBytes: mem, ComputeRatio: ratio}
	}
	return out, nil
}

// GrantEnv is the environment that tells a container what it holds of
// each GPU, in the order given: NVIDIA_VISIBLE_DEVICES and the per-GPU
// lists ParseGrants reads back. Device-plugin mode adds the slice IDs.
func GrantEnv(grants []Grant) map[string]string {
	n := len(grants)
	uuids, slices, mem, compute := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	for i, g := range grants {
		uuids[i] = g.UUID
		slices[i] = strconv.Itoa(g.Slices)
		mem[i] = strconv.FormatUint(g.MemoryBytes, 10)
		compute[i] = strconv.FormatFloat(g.ComputeRatio, 'f', -1, 64)
	}
	return map[string]string{
		EnvVisibleDevices: strings.Join(uuids, ","),
		EnvSlices:         strings.Join(slices, ","),
		EnvMemoryLimit:    strings.Join(mem, ","),
		EnvComputeLimit:   strings.Join(compute, ","),
	}
}
