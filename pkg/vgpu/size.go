package vgpu

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// ParseSize reads a memory size as both node binaries take it (the
// agent's slicing.sliceMemory, the DRA driver's --slice-memory): a
// positive number in the Kubernetes quantity style, with an optional
// binary (Ki, Mi, Gi, Ti) or decimal (K, M, G, T) suffix, and a fraction
// only where it comes to whole bytes ("1.5Gi" is 1610612736; "1.5" is
// refused). Anything else is one error naming the input.
func ParseSize(s string) (uint64, error) {
	bad := fmt.Errorf("%q is not a positive size like 10Gi, 1.5Gi or 512Mi", s)
	units := []struct {
		suffix string
		mult   uint64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}}
	num, mult := s, uint64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	whole, frac, hasFrac := strings.Cut(num, ".")
	// ParseUint below refuses signs, spaces and underscores in either part.
	if whole == "" || (hasFrac && (frac == "" || len(frac) > 12)) {
		return 0, bad
	}
	w, err := strconv.ParseUint(whole, 10, 64)
	if err != nil {
		return 0, bad
	}
	hi, n := bits.Mul64(w, mult)
	if hi != 0 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	if hasFrac {
		f, err := strconv.ParseUint(frac, 10, 64)
		if err != nil {
			return 0, bad
		}
		den := uint64(1)
		for range frac {
			den *= 10
		}
		fhi, flo := bits.Mul64(f, mult)
		if fhi >= den {
			return 0, fmt.Errorf("%q is too large", s)
		}
		part, rem := bits.Div64(fhi, flo, den)
		if rem != 0 {
			return 0, fmt.Errorf("%q is not a whole number of bytes", s)
		}
		var carry uint64
		if n, carry = bits.Add64(n, part, 0); carry != 0 {
			return 0, fmt.Errorf("%q is too large", s)
		}
	}
	if n == 0 {
		return 0, bad
	}
	return n, nil
}
