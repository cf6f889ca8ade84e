package kubeletstate

import (
	"errors"
	"io/fs"
	"sync"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// PreparedClaims reads the node.DRA driver's record of prepared claims sample
// after sample, parsing it only when the driver replaced it.
type PreparedClaims = CachedFile[contract.PreparedClaims]

// NewPreparedClaims returns a reader of the record at path. Its Claims is
// never nil once read.
func NewPreparedClaims(path string) *PreparedClaims {
	return NewCachedFile(path, "node.DRA driver's prepared claims", func(b []byte) (contract.PreparedClaims, error) {
		r, err := contract.ParsePreparedClaims(b)
		if err == nil && r.Claims == nil {
			r.Claims = map[string]contract.PreparedClaim{}
		}
		return r, err
	})
}

// ClaimedGPUsReader returns a function telling which GPUs the node.DRA
// driver's prepared claims (its record at path) hold a share of, safe for
// concurrent use; a record that does not exist holds none. The device
// plugin refuses those GPUs' slices.
func ClaimedGPUsReader(path string) func() (map[string]bool, error) {
	var mu sync.Mutex
	r := NewPreparedClaims(path)
	return func() (map[string]bool, error) {
		mu.Lock()
		defer mu.Unlock()
		record, err := r.Read()
		if errors.Is(err, fs.ErrNotExist) {
			return map[string]bool{}, nil
		}
		if err != nil {
			return nil, err
		}
		out := map[string]bool{}
		for _, c := range record.Claims {
			shares, _ := node.ClaimGPUs(c)
			for gpu := range shares {
				out[gpu] = true
			}
		}
		return out, nil
	}
}
