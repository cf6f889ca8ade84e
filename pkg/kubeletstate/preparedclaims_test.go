package kubeletstate

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// TestPreparedClaimsRead: the driver's record, read through the cache; one
// with no claims reads as known and empty, a missing one as unknown.
func TestPreparedClaimsRead(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "dra-prepared.json")
	r := NewPreparedClaims(path)
	defer r.Close()
	if _, err := r.Read(); err == nil {
		t.Error("a missing record read as known")
	}
	if err := os.WriteFile(path, []byte(`{"version":1,"claims":null}`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := r.Read()
	if err != nil || got.Claims == nil || len(got.Claims) != 0 {
		t.Errorf("empty record = %+v, %v; want known and empty", got, err)
	}
}

// TestClaimedGPUsReader: a prepared claim holds its GPU before any
// container of its pod runs; admin access holds none.
func TestClaimedGPUsReader(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "dra-prepared.json")
	read := ClaimedGPUsReader(path)
	if got, err := read(); err != nil || len(got) != 0 {
		t.Errorf("no record: %v, %v; want none held", got, err)
	}
	g := contract.ClaimGrant{UUID: "GPU-1", Slices: 1, SlicesTotal: 4, ComputeRatio: 0.25, MemoryBytes: 1, MemoryCapacity: 4}
	admin := contract.ClaimGrant{UUID: "GPU-2", SlicesTotal: 4, MemoryCapacity: 4, Admin: true}
	data, _ := json.Marshal(contract.PreparedClaims{Version: 1, Claims: map[string]contract.PreparedClaim{"a": {Grants: []contract.ClaimGrant{g, admin}}}})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := read(); err != nil || len(got) != 1 || !got["GPU-1"] {
		t.Errorf("record with a share of GPU-1 and admin access to GPU-2: %v, %v", got, err)
	}
	if err := os.WriteFile(path, []byte(`{"version":9}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := read(); err == nil {
		t.Errorf("a bad record read as %v", got)
	}
}
