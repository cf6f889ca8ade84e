// Package protocol is how fake GPU workload processes talk to the fake
// GPU node (internal/fakegpu): files in the node's workload directory. It has
// no dependencies, so the workload program builds static and runs inside
// container images without a libc.
package protocol

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// WorkloadState is what a fake GPU workload process publishes about itself
// in <workload dir>/<pid>.json: the GPU it uses, the memory it holds, the
// compute it wants, and how much GPU time it has asked for so far. A
// workload only asks for time while it runs, so a frozen or stopped process
// asks for none; the node decides how much of what was asked the GPU could
// serve.
type WorkloadState struct {
	// GPU is the UUID of the GPU the workload runs on.
	GPU string `json:"gpu"`
	// MemoryBytes is the GPU memory the workload holds.
	MemoryBytes uint64 `json:"memoryBytes"`
	// Demand is the share of a whole GPU the workload would use alone, 0..1.
	Demand float64 `json:"demand"`
	// RequestedNanos is the GPU time asked for since the workload started.
	RequestedNanos int64 `json:"requestedNanos"`
}

// WriteWorkloadState publishes a workload's state atomically in
// <dir>/<pid>.json.
func WriteWorkloadState(dir string, pid int, s WorkloadState) error {
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	path := filepath.Join(dir, strconv.Itoa(pid)+".json")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write workload state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write workload state: %w", err)
	}
	return nil
}

// OOMSuffix ends the file through which the fake driver refuses a
// workload's allocation: <workload dir>/<pid><OOMSuffix> holds the reason.
const OOMSuffix = ".oom"
