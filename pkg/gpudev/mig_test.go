package gpudev

import "testing"

func TestMIGProfileName(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	tests := []struct {
		gi, ci   int
		mem, gpu uint64
		me       bool
		want     string
	}{
		{1, 1, 4864 * mib, 40960 * mib, false, "1g.5gb"},
		{1, 1, 4864 * mib, 40960 * mib, true, "1g.5gb+me"},
		{7, 7, 40192 * mib, 40960 * mib, false, "7g.40gb"},
		{3, 3, 70 * 1024 * mib, 143771 * mib, false, "3g.71gb"},
		{1, 1, 17 * 1024 * mib, 143771 * mib, false, "1g.18gb"},
		{2, 1, 9856 * mib, 81559 * mib, false, "1c.2g.10gb"},
		{1, 1, 1, 0, false, "1g.0gb"},
	}
	for _, tc := range tests {
		if got := MIGProfileName(tc.gi, tc.ci, tc.mem, tc.gpu, tc.me); got != tc.want {
			t.Errorf("MIGProfileName(%d, %d, %d, %d, %v) = %q, want %q", tc.gi, tc.ci, tc.mem, tc.gpu, tc.me, got, tc.want)
		}
	}
}

func TestValidMIGProfileName(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"1g.5gb": true, "1g.10gb+me": true, "1c.2g.20gb": true, "7g.141gb": true,
		"": false, "1g": false, "g.5gb": false, "1g.5gb+xx": false, "1g.5GB": false, "1g.5gb.": false,
		"1c.2g.20gb.1": false, "a1g.5gb": false, "1g.-5gb": false, "99999g.1gb": false,
	} {
		if got := ValidMIGProfileName(s); got != want {
			t.Errorf("ValidMIGProfileName(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestGPUFraction(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	h100 := Device{MemoryBytes: 81559 * mib}
	for _, tc := range []struct {
		name     string
		gi, ci   int
		mem      uint64
		gpu      Device
		fraction float64
	}{
		{"1g.10gb on an H100", 1, 1, 9856 * mib, h100, 0.125},
		{"3g.40gb on an H100", 3, 3, 40192 * mib, h100, 0.5},
		{"7g.80gb on an H100", 7, 7, 80384 * mib, h100, 1},
		{"1c.3g.40gb on an H100", 3, 1, 40192 * mib, h100, 0.5 / 3},
		{"1g.5gb on an A100-40GB", 1, 1, 4864 * mib, Device{MemoryBytes: 40960 * mib}, 0.125},
		{"GPU memory unknown", 1, 1, 4864 * mib, Device{}, 1},
	} {
		in := InForce{MIGInstance: MIGInstance{GISlices: tc.gi, CISlices: tc.ci, MemoryBytes: tc.mem}, Parent: tc.gpu}
		if got := in.GPUFraction(); got != tc.fraction {
			t.Errorf("%s: fraction %v, want %v", tc.name, got, tc.fraction)
		}
	}
}
