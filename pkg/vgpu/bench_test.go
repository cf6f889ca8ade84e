package vgpu

import (
	"fmt"
	"testing"
)

// BenchmarkPlace8x16 places a request of 4 on 8 GPUs × 16 slices with half
// the slices taken, the pure part of GetPreferredAllocation.
func BenchmarkPlace8x16(b *testing.B) {
	var gpus []GPU
	for i := range 8 {
		gpus = append(gpus, GPU{UUID: fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", i), Index: i, Model: "m", MemoryBytes: 80 << 30})
	}
	l, err := NewLayout(gpus, Config{Default: Rule{SlicesPerGPU: 16}})
	if err != nil {
		b.Fatal(err)
	}
	var avail []string
	for i, s := range l.SliceIDs() {
		if i%2 == 0 || s.Index > 8 {
			avail = append(avail, s.String())
		}
	}
	for _, policy := range []Policy{Binpack, Spread} {
		b.Run(string(policy), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := l.Place(Request{Available: avail, Size: 4}, policy, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
