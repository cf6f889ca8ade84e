package vgpu

import (
	"fmt"
	"testing"
)

func FuzzParseSliceID(f *testing.F) {
	for _, s := range []string{"GPU-1::0", "GPU-abc::15", "::", "GPU-1::01", "a::b::c", "GPU-1::-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseSliceID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("ParseSliceID(%q).String() = %q: an ID must have one spelling", s, id.String())
		}
		again, err := ParseSliceID(id.String())
		if err != nil || again != id {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}

// FuzzPlace builds a node, an availability pattern, health and a request
// from the fuzzer's bytes and checks Place's invariants: exactly the size
// asked, only available slices on healthy GPUs, must-include kept, no
// duplicates, binpack on one GPU whenever one GPU can hold the request, and
// no error when an answer exists.
func FuzzPlace(f *testing.F) {
	f.Add(uint8(4), uint8(4), uint64(0xffff), uint8(0), uint16(0), uint8(3), false)
	f.Add(uint8(8), uint8(16), uint64(0xf0f0f0f0f0f0f0f0), uint8(0x2), uint16(0x0103), uint8(20), false)
	f.Add(uint8(2), uint8(3), uint64(0x3b), uint8(0x1), uint16(0x0204), uint8(4), true)
	f.Fuzz(func(t *testing.T, nGPU, nSlices uint8, availMask uint64, downMask uint8, mustPick uint16, size uint8, spread bool) {
		nGPU = nGPU%8 + 1
		nSlices = nSlices%16 + 1
		var gpus []GPU
		for i := range int(nGPU) {
			gpus = append(gpus, GPU{UUID: fmt.Sprintf("GPU-%d", i), Index: i, Model: "m", MemoryBytes: 1 << 34})
		}
		l, err := NewLayout(gpus, Config{Default: Rule{SlicesPerGPU: int(nSlices)}})
		if err != nil {
			t.Fatal(err)
		}
		all := l.SliceIDs()
		var avail []string
		availSet := map[string]bool{}
		for i, s := range all {
			// Bits repeat past 64 slices so large nodes still vary.
			if availMask&(1<<(uint(i)%64)) != 0 {
				avail = append(avail, s.String())
				availSet[s.String()] = true
			}
		}
		down := map[string]bool{}
		for i := range int(nGPU) {
			if downMask&(1<<uint(i)) != 0 {
				down[fmt.Sprintf("GPU-%d", i)] = true
			}
		}
		healthy := func(uuid string) bool { return !down[uuid] }
		// Up to two must-include picks among the available, healthy slices.
		var must []string
		var candidates []string
		for _, id := range avail {
			s, _ := ParseSliceID(id)
			if healthy(s.UUID) {
				candidates = append(candidates, id)
			}
		}
		if len(candidates) > 0 {
			for _, b := range []uint8{uint8(mustPick), uint8(mustPick >> 8)} {
				if b&0x80 != 0 {
					must = append(must, candidates[int(b&0x7f)%len(candidates)])
				}
			}
		}
		policy := Binpack
		if spread {
			policy = Spread
		}
		req := Request{Available: avail, MustInclude: must, Size: int(size%32) + 1}
		got, err := l.Place(req, policy, healthy)

		mustSet := map[string]bool{}
		for _, m := range must {
			mustSet[m] = true
		}
		possible := len(candidates) >= req.Size && len(mustSet) <= req.Size
		if err != nil {
			if possible {
				t.Fatalf("Place(%+v) failed though %d healthy slices are available: %v", req, len(candidates), err)
			}
			return
		}
		if !possible {
			t.Fatalf("Place(%+v) = %v for an impossible request", req, got)
		}
		if len(got) != req.Size {
			t.Fatalf("Place() returned %d slices, asked for %d", len(got), req.Size)
		}
		seen := map[string]bool{}
		onGPU := map[string]bool{}
		for _, id := range got {
			if seen[id] {
				t.Fatalf("slice %s returned twice", id)
			}
			seen[id] = true
			if !availSet[id] {
				t.Fatalf("slice %s was not available", id)
			}
			s, _ := ParseSliceID(id)
			if down[s.UUID] {
				t.Fatalf("slice %s is on an unhealthy GPU", id)
			}
			onGPU[s.UUID] = true
		}
		for m := range mustSet {
			if !seen[m] {
				t.Fatalf("must-include slice %s dropped", m)
			}
		}
		if policy == Binpack && len(onGPU) > 1 && fitsOnOne(candidates, mustSet, req.Size) {
			t.Fatalf("binpack split a request of %d across %d GPUs although one GPU could hold it: %v", req.Size, len(onGPU), got)
		}
	})
}

// fitsOnOne reports whether one GPU holds every must-include slice and has
// at least size free healthy slices.
func fitsOnOne(candidates []string, must map[string]bool, size int) bool {
	free := map[string]int{}
	for _, id := range candidates {
		s, _ := ParseSliceID(id)
		free[s.UUID]++
	}
	for uuid, n := range free {
		if n < size {
			continue
		}
		ok := true
		for m := range must {
			s, _ := ParseSliceID(m)
			if s.UUID != uuid {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}
