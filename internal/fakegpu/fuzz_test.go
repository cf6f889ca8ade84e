package fakegpu

import "testing"

// FuzzParse checks that any fake node file that parses builds a node whose
// devices are consistent: unique UUIDs and indexes in order.
func FuzzParse(f *testing.F) {
	f.Add("preset: A100-40GB\ncount: 4\n")
	f.Add("gpus: [{preset: H200-141GB}, {model: x, memoryMiB: 1, computeCapability: \"7.5\"}]\nfaults: {gpus: [{index: 1, lost: true}]}\n")
	f.Add("preset: H100-80GB\ncount: 2\nfaults: {failCalls: [devices]}\n")
	f.Fuzz(func(t *testing.T, content string) {
		cfg, err := Parse([]byte(content))
		if err != nil {
			return
		}
		n, err := New(cfg)
		if err != nil {
			t.Fatalf("Parse accepted a config New rejects: %v", err)
		}
		if err := n.FailCall(CallDevices, false); err != nil {
			t.Fatal(err)
		}
		if err := n.SetFaults(Faults{}); err != nil {
			t.Fatal(err)
		}
		devs, err := n.Devices()
		if err != nil {
			t.Fatalf("Devices() with no faults: %v", err)
		}
		seen := map[string]bool{}
		for i, d := range devs {
			if d.Index != i || seen[d.UUID] || d.MemoryBytes == 0 {
				t.Fatalf("device %d = %+v", i, d)
			}
			seen[d.UUID] = true
		}
	})
}
