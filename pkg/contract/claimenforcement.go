package contract

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
)

// ClaimEnforcementFile is the name, beside the DRA driver's record of
// prepared claims, of the file where gpu-agent --dra writes how each
// claim's share is held on the node; the driver reads it into the claims'
// status (the Enforced condition).
const ClaimEnforcementFile = "dra-claim-enforcement.json"

// ClaimEnforcementPath is the enforcement file beside the record of
// prepared claims at preparedClaims.
func ClaimEnforcementPath(preparedClaims string) string {
	return filepath.Join(filepath.Dir(preparedClaims), ClaimEnforcementFile)
}

// ClaimEnforcementVersion is the enforcement file's format.
const ClaimEnforcementVersion = 1

// ClaimEnforcement is the enforcement file: each claim held by a running
// container on the node, by "namespace/name".
type ClaimEnforcement struct {
	Version int                      `json:"version"`
	Claims  map[string]ClaimEnforced `json:"claims"`
}

// ClaimEnforced is how one claim's share is held: for compute and memory,
// the agent's reason (gpuslice_enforcement_enforced's: "enforced",
// "pod-level", or why not) over every container holding the claim, the
// worst of them, and the tier holding it where it is held.
type ClaimEnforced struct {
	// State sums both up: ClaimHeld, ClaimHeldAtPodLevel, ClaimNotHeld
	// (a tier cannot hold it) or ClaimEnforcementOff (the administrator
	// turned a tier off or to report only).
	State       string `json:"state"`
	Compute     string `json:"compute"`
	Memory      string `json:"memory"`
	ComputeTier string `json:"computeTier,omitempty"`
	MemoryTier  string `json:"memoryTier,omitempty"`
	// Containers is how many of the claim's containers hold it now.
	Containers int `json:"containers"`
}

// The states of a claim's enforcement (ClaimEnforced.State).
const (
	ClaimHeld           = "held"
	ClaimHeldAtPodLevel = "held-at-pod-level"
	ClaimNotHeld        = "not-held"
	ClaimEnforcementOff = "off"
)

// ErrBadClaimEnforcement is an enforcement file that cannot be read.
var ErrBadClaimEnforcement = errors.New("bad claim enforcement file")

// ParseClaimEnforcement reads an enforcement file.
func ParseClaimEnforcement(data []byte) (ClaimEnforcement, error) {
	var r ClaimEnforcement
	if err := json.Unmarshal(data, &r); err != nil {
		return ClaimEnforcement{}, fmt.Errorf("%w: %w", ErrBadClaimEnforcement, err)
	}
	if r.Version != ClaimEnforcementVersion {
		return ClaimEnforcement{}, fmt.Errorf("%w: version %d, want %d", ErrBadClaimEnforcement, r.Version, ClaimEnforcementVersion)
	}
	if r.Claims == nil {
		r.Claims = map[string]ClaimEnforced{}
	}
	return r, nil
}
