package vgpu

import (
	"errors"
	"fmt"
	"sort"
)

// ErrDuplicateSlice reports a slice ID given twice in one request.
var ErrDuplicateSlice = errors.New("duplicate slice")

// GPULimit is what a container may use of one GPU.
type GPULimit struct {
	// UUID and Index name the GPU.
	UUID  string
	Index int
	// Slices is how many of the GPU's slices the container holds.
	Slices int
	// SlicesTotal is how many slices the GPU has.
	SlicesTotal int
	// MemoryBytes is the GPU memory the container may use: Slices times the
	// slice memory.
	MemoryBytes uint64
	// ComputeRatio is the share of the GPU's compute, Slices/SlicesTotal, in 0..1.
	ComputeRatio float64
}

// ComputePercent returns the compute share as a whole percentage, rounded
// down but never below 1, the form MPS expects.
func (g GPULimit) ComputePercent() int {
	p := g.Slices * 100 / g.SlicesTotal
	return max(p, 1)
}

// Limits returns, per GPU ordered by index, what a container holding ids may
// use. Unknown, malformed or repeated IDs are errors naming the ID.
func (l *Layout) Limits(ids []string) ([]GPULimit, error) {
	held := make(map[int]int) // layout position -> slices held
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		s, err := l.Resolve(id)
		if err != nil {
			return nil, err
		}
		if seen[id] {
			return nil, fmt.Errorf("%w %s", ErrDuplicateSlice, id)
		}
		seen[id] = true
		held[l.byUUID[s.UUID]]++
	}
	out := make([]GPULimit, 0, len(held))
	for pos, k := range held {
		g := l.gpus[pos]
		out = append(out, GPULimit{
			UUID:         g.UUID,
			Index:        g.Index,
			Slices:       k,
			SlicesTotal:  g.Slices,
			MemoryBytes:  uint64(k) * g.SliceMemoryBytes,
			ComputeRatio: float64(k) / float64(g.Slices),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Index != out[j].Index {
			return out[i].Index < out[j].Index
		}
		return out[i].UUID < out[j].UUID // a GPU's MIG instances share its index
	})
	return out, nil
}
