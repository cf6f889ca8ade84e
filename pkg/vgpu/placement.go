package vgpu

import (
	"errors"
	"fmt"
	"sort"
)

// Policy chooses among GPUs that can hold a request.
type Policy string

const (
	// Binpack puts a request on the GPU with the fewest free slices that
	// still fits it, keeping whole GPUs free for large requests. Default.
	Binpack Policy = "binpack"
	// Spread puts a request on the GPU with the most free slices, spreading
	// load across GPUs.
	Spread Policy = "spread"
)

// ParsePolicy accepts "binpack" and "spread"; the empty string is Binpack.
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case "", Binpack:
		return Binpack, nil
	case Spread:
		return Spread, nil
	}
	return "", fmt.Errorf("unknown placement policy %q (want binpack or spread)", s)
}

// ErrCannotPlace reports a request that the available slices cannot satisfy.
var ErrCannotPlace = errors.New("cannot place request")

// Request is one container's GetPreferredAllocation question.
type Request struct {
	// Available are the slice IDs the kubelet may hand out.
	Available []string
	// MustInclude are slice IDs that must be part of the answer.
	MustInclude []string
	// Size is how many slices the container asks for.
	Size int
}

// Healthy reports whether the GPU with the given UUID may be allocated from.
type Healthy func(uuid string) bool

// Place answers a preferred-allocation request: exactly req.Size slice IDs,
// all from req.Available, none on an unhealthy GPU, every must-include ID
// kept. It uses one GPU whenever a GPU that holds every must-include slice
// has enough free slices, choosing that GPU by policy; otherwise it spans the
// fewest GPUs it can. The result is ordered by GPU index, then slice index.
func (l *Layout) Place(req Request, policy Policy, healthy Healthy) ([]string, error) {
	if req.Size <= 0 {
		return nil, fmt.Errorf("%w: size %d", ErrCannotPlace, req.Size)
	}
	free, err := l.freeByGPU(req.Available, healthy)
	if err != nil {
		return nil, err
	}
	must := make(map[int][]int) // layout position -> must-include slice indexes
	nMust := 0
	seen := make(map[string]bool, len(req.MustInclude))
	for _, id := range req.MustInclude {
		if seen[id] {
			continue
		}
		seen[id] = true
		s, err := l.Resolve(id)
		if err != nil {
			return nil, err
		}
		pos := l.byUUID[s.UUID]
		if !contains(free[pos], s.Index) {
			return nil, fmt.Errorf("%w: must-include slice %s is not available or its GPU is unhealthy", ErrCannotPlace, id)
		}
		must[pos] = append(must[pos], s.Index)
		nMust++
	}
	if nMust > req.Size {
		return nil, fmt.Errorf("%w: %d must-include slices exceed size %d", ErrCannotPlace, nMust, req.Size)
	}
	total := 0
	for _, f := range free {
		total += len(f)
	}
	if total < req.Size {
		return nil, fmt.Errorf("%w: %d slices requested, %d available and healthy", ErrCannotPlace, req.Size, total)
	}

	if pos, ok := l.pickSingle(free, must, req.Size, policy); ok {
		return l.ids(map[int][]int{pos: take(free[pos], must[pos], req.Size)}), nil
	}
	return l.ids(l.span(free, must, req.Size)), nil
}

// freeByGPU groups the available, healthy slices by layout position, each
// list sorted and free of duplicates.
func (l *Layout) freeByGPU(available []string, healthy Healthy) (map[int][]int, error) {
	free := make(map[int][]int)
	seen := make(map[string]bool, len(available))
	for _, id := range available {
		if seen[id] {
			continue
		}
		seen[id] = true
		s, err := l.Resolve(id)
		if err != nil {
			return nil, err
		}
		if healthy != nil && !healthy(s.UUID) {
			continue
		}
		pos := l.byUUID[s.UUID]
		free[pos] = append(free[pos], s.Index)
	}
	for pos := range free {
		sort.Ints(free[pos])
	}
	return free, nil
}

// pickSingle returns the GPU that should hold the whole request, if one can.
func (l *Layout) pickSingle(free, must map[int][]int, size int, policy Policy) (int, bool) {
	if len(must) > 1 {
		return 0, false
	}
	best, found := 0, false
	for pos, f := range free {
		if len(f) < size {
			continue
		}
		if len(must) == 1 {
			if _, ok := must[pos]; !ok {
				continue
			}
		}
		if !found || better(len(f), len(free[best]), l.gpus[pos].Index, l.gpus[best].Index, policy) {
			best, found = pos, true
		}
	}
	return best, found
}

// better reports whether a GPU with freeA free slices and index idxA beats
// one with freeB and idxB under policy. Ties go to the lower index so answers
// are deterministic.
func better(freeA, freeB, idxA, idxB int, policy Policy) bool {
	if freeA != freeB {
		if policy == Spread {
			return freeA > freeB
		}
		return freeA < freeB
	}
	return idxA < idxB
}

// span places a request no single GPU can hold across as few GPUs as it can:
// the GPUs with must-include slices first, then the GPUs with the most free
// slices.
func (l *Layout) span(free, must map[int][]int, size int) map[int][]int {
	order := make([]int, 0, len(free))
	for pos := range free {
		order = append(order, pos)
	}
	sort.Slice(order, func(i, j int) bool {
		a, b := order[i], order[j]
		_, ma := must[a]
		_, mb := must[b]
		if ma != mb {
			return ma
		}
		if len(free[a]) != len(free[b]) {
			return len(free[a]) > len(free[b])
		}
		return l.gpus[a].Index < l.gpus[b].Index
	})
	out := make(map[int][]int)
	left := size
	for pos, m := range must {
		out[pos] = append([]int(nil), m...)
		left -= len(m)
	}
	for _, pos := range order {
		if left == 0 {
			break
		}
		n := min(left, len(free[pos])-len(must[pos]))
		if n <= 0 {
			continue
		}
		out[pos] = take(free[pos], must[pos], len(must[pos])+n)
		left -= n
	}
	return out
}

// take returns n slice indexes from free: every index in must, then the
// lowest others.
func take(free, must []int, n int) []int {
	out := append(make([]int, 0, n), must...)
	for _, i := range free {
		if len(out) == n {
			break
		}
		if !contains(must, i) {
			out = append(out, i)
		}
	}
	return out
}

func (l *Layout) ids(byPos map[int][]int) []string {
	var out []SliceID
	for pos, idx := range byPos {
		for _, i := range idx {
			out = append(out, SliceID{UUID: l.gpus[pos].UUID, Index: i})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		gi, gj := l.gpus[l.byUUID[out[i].UUID]].Index, l.gpus[l.byUUID[out[j].UUID]].Index
		if gi != gj {
			return gi < gj
		}
		return out[i].Index < out[j].Index
	})
	ids := make([]string, len(out))
	for i, s := range out {
		ids[i] = s.String()
	}
	return ids
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
