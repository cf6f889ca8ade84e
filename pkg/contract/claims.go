package contract

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// DRA names: the driver, the CDI kind of the device each prepared claim
// gets ("<kind>=<claim UID>"), and the record of prepared claims the DRA
// driver writes and the agent reads.
const (
	// DRADriverName is gpuslice's DRA driver.
	DRADriverName = "gpu.gpuslice.io"
	// DRACDIKind is the CDI kind of prepared claims' devices.
	DRACDIKind = DRADriverName + "/claim"
	// DRAPreparedClaims is where the DRA driver records prepared claims.
	DRAPreparedClaims = "/var/lib/gpuslice/dra-prepared.json"
	// PreparedClaimsVersion is the record's format.
	PreparedClaimsVersion = 1
	// DRACapacityCompute and DRACapacityMemory name the capacities (and
	// counters) of the driver's devices: compute in slices, memory in
	// bytes. The quota controller reads them from ResourceSlices and
	// allocations.
	DRACapacityCompute = "compute"
	DRACapacityMemory  = "memory"
)

// PreparedClaims is the DRA driver's record of the claims it prepared, by
// claim UID: what each holds of each GPU.
type PreparedClaims struct {
	Version int                      `json:"version"`
	Claims  map[string]PreparedClaim `json:"claims"`
}

// PreparedClaim is one prepared claim.
type PreparedClaim struct {
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	Grants    []ClaimGrant `json:"grants"`
}

// ClaimGrant is what a claim holds of one GPU; the DRA driver works with
// this type itself (dra.Grant), so what it prepares is what it records.
type ClaimGrant struct {
	UUID  string `json:"uuid"`
	Index int    `json:"index"`
	// Slices of SlicesTotal is the claim's compute; ComputeRatio the same
	// as a share.
	Slices       int     `json:"slices"`
	SlicesTotal  int     `json:"slicesTotal"`
	ComputeRatio float64 `json:"computeRatio"`
	// MemoryBytes of MemoryCapacity is the claim's memory.
	MemoryBytes    uint64 `json:"memoryBytes"`
	MemoryCapacity uint64 `json:"memoryCapacity"`
	// Whole is true when the claim holds the GPU alone; Admin for an
	// admin-access (monitoring) claim, which holds nothing.
	Whole bool `json:"whole,omitempty"`
	Admin bool `json:"admin,omitempty"`
	// Parent is set when UUID names a MIG instance ("MIG-..."): the
	// physical GPU it is on. The instance is held whole, as a GPU of one
	// slice, and Index is its GPU's. MIGProfile is its profile.
	Parent     string `json:"parent,omitempty"`
	MIGProfile string `json:"migProfile,omitempty"`
}

// ClaimUIDOfCDIDevice returns the claim UID a prepared claim's CDI device
// name stands for, and false for any other device.
func ClaimUIDOfCDIDevice(name string) (string, bool) {
	uid, ok := strings.CutPrefix(name, DRACDIKind+"=")
	if !ok || uid == "" {
		return "", false
	}
	return uid, true
}

// ErrBadPreparedClaims reports a record that cannot be trusted.
var ErrBadPreparedClaims = errors.New("bad prepared claims record")

// ParsePreparedClaims reads the record and checks every grant: a GPU named,
// compute within 1..SlicesTotal (0 for admin access), a ratio that agrees
// with it, memory within the capacity. Anything else is an error, and
// nothing is returned.
func ParsePreparedClaims(data []byte) (PreparedClaims, error) {
	var r PreparedClaims
	if err := json.Unmarshal(data, &r); err != nil {
		return PreparedClaims{}, fmt.Errorf("%w: %w", ErrBadPreparedClaims, err)
	}
	if r.Version != PreparedClaimsVersion {
		return PreparedClaims{}, fmt.Errorf("%w: version %d, want %d", ErrBadPreparedClaims, r.Version, PreparedClaimsVersion)
	}
	for uid, c := range r.Claims {
		for _, g := range c.Grants {
			if err := g.check(); err != nil {
				return PreparedClaims{}, fmt.Errorf("%w: claim %s (%s/%s): %w", ErrBadPreparedClaims, uid, c.Namespace, c.Name, err)
			}
		}
	}
	return r, nil
}

func (g ClaimGrant) check() error {
	switch {
	case g.UUID == "":
		return errors.New("a grant names no GPU")
	case g.SlicesTotal < 1 || g.MemoryCapacity == 0:
		return fmt.Errorf("GPU %s has no slices or memory", g.UUID)
	case g.Admin && (g.Slices != 0 || g.MemoryBytes != 0):
		return fmt.Errorf("admin access to GPU %s holds something", g.UUID)
	case !g.Admin && (g.Slices < 1 || g.Slices > g.SlicesTotal || g.MemoryBytes == 0 || g.MemoryBytes > g.MemoryCapacity):
		return fmt.Errorf("GPU %s: %d of %d slices, %d of %d bytes", g.UUID, g.Slices, g.SlicesTotal, g.MemoryBytes, g.MemoryCapacity)
	case !g.Admin && g.ComputeRatio != float64(g.Slices)/float64(g.SlicesTotal):
		return fmt.Errorf("GPU %s: ratio %v is not %d/%d", g.UUID, g.ComputeRatio, g.Slices, g.SlicesTotal)
	case g.Parent != "" && (!g.Whole || g.SlicesTotal != 1 || !strings.HasPrefix(g.UUID, "MIG-")):
		return fmt.Errorf("MIG instance %s of GPU %s is not held whole as one slice", g.UUID, g.Parent)
	}
	return nil
}
