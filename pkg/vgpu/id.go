package vgpu

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// idSeparator joins a GPU UUID and a slice index in a slice ID. It is the
// form dcgm-exporter already understands for shared GPUs.
const idSeparator = "::"

// ErrInvalidID reports a string that is not a well-formed slice ID.
var ErrInvalidID = errors.New("invalid slice ID")

// SliceID names one slice of one GPU: "<GPU-UUID>::<index>".
type SliceID struct {
	// UUID is the GPU's UUID as NVML reports it, e.g. "GPU-8c7d...".
	UUID string
	// Index is the slice's position on its GPU, from 0.
	Index int
}

// String returns the canonical form "<UUID>::<index>".
func (s SliceID) String() string {
	return s.UUID + idSeparator + strconv.Itoa(s.Index)
}

// ParseSliceID parses the canonical form produced by SliceID.String. It
// rejects anything that would not print back to the same string, so an ID
// has exactly one spelling.
func ParseSliceID(s string) (SliceID, error) {
	i := strings.LastIndex(s, idSeparator)
	if i < 0 {
		return SliceID{}, fmt.Errorf("%w %q: want <GPU-UUID>::<index>", ErrInvalidID, s)
	}
	uuid, num := s[:i], s[i+len(idSeparator):]
	if err := validUUID(uuid); err != nil {
		return SliceID{}, fmt.Errorf("%w %q: %w", ErrInvalidID, s, err)
	}
	idx, err := strconv.Atoi(num)
	if err != nil || idx < 0 || strconv.Itoa(idx) != num {
		return SliceID{}, fmt.Errorf("%w %q: index %q is not a non-negative decimal", ErrInvalidID, s, num)
	}
	return SliceID{UUID: uuid, Index: idx}, nil
}

// validUUID accepts the printable, separator-free strings NVML uses as UUIDs
// (GPU-..., MIG-...). It is deliberately loose about the format inside, since
// NVML's format is not ours to define, but strict about what would break IDs,
// env values or label values built from it.
func validUUID(uuid string) error {
	if uuid == "" {
		return errors.New("empty GPU UUID")
	}
	if len(uuid) > 128 {
		return errors.New("GPU UUID longer than 128 bytes")
	}
	if strings.Contains(uuid, idSeparator) {
		return errors.New("GPU UUID contains \"::\"")
	}
	for _, r := range uuid {
		if !uuidChar(r) {
			return fmt.Errorf("GPU UUID has character %q", r)
		}
	}
	return nil
}

func uuidChar(r rune) bool {
	switch {
	case r > unicode.MaxASCII:
		return false
	case unicode.IsLetter(r), unicode.IsDigit(r):
		return true
	}
	return r == '-' || r == '_' || r == '.'
}
