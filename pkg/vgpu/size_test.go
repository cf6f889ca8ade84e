package vgpu

import "testing"

// TestParseSize: one memory-size rule for both node binaries (the review
// found "1.5Gi" accepted by the DRA driver and refused by the agent).
func TestParseSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]uint64{
		"1": 1, "512Mi": 512 << 20, "10Gi": 10 << 30, "1Ti": 1 << 40, "2K": 2000, "3G": 3e9, "4Ki": 4096,
		"1.5Gi": 3 << 29, "0.5Ki": 512, "2.5G": 25e8, "18446744073709551615": 1<<64 - 1,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "0.0Gi", "Gi", "1.5", "1.Gi", ".5Gi", "-1Gi", "+1Gi", "10GB", "99999999999Ti",
		" 1Gi", "1e9", "0.1", "1.0000000000001Gi", "18446744073709551616", "16777216Ti", "16777215.9999999999Ti"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d; want an error", in, got)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"10Gi", "1", "1.5Gi", "512Mi", "3G", "18446744073709551615", "16777216Ti", "0.001K"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n == 0 {
			t.Fatalf("ParseSize(%q) = 0 without error", s)
		}
	})
}
