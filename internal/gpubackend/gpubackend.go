// Package gpubackend opens the GPU backend a binary was asked for: NVML
// over the driver, or the built-in fake GPU node. gpu-agent and
// gpu-dra-driver open theirs the same way, so the same flags mean the
// same GPUs to both. It is the one importer of internal/fakegpu outside
// tests; a build with the nofakegpu tag (the shipped image, make image)
// leaves the fake node out, and asking it for one is an error.
package gpubackend

import (
	"context"
	"log/slog"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// Kinds of backend.
const (
	// NVML opens the driver's NVML.
	NVML = "nvml"
	// Fake opens the fake GPU node.
	Fake = "fake"
)

// Opened is an open backend.
type Opened struct {
	nvml.Backend
	// Watch follows the fake node's file (faults injected while it runs)
	// until ctx ends; nil for NVML, and for a fake node without a file.
	Watch func(ctx context.Context, log *slog.Logger) error
}

// Open returns NVML's backend for kind NVML, and for kind Fake the fake
// node described by fakeFile (the default node when it is empty).
func Open(kind, fakeFile string, o nvml.Options) (Opened, error) {
	if kind == NVML {
		b, err := nvml.New(o)
		if err != nil {
			return Opened{}, err
		}
		return Opened{Backend: b}, nil
	}
	return openFake(fakeFile)
}

// CheckFakeFile reports whether fakeFile describes a fake node this
// binary can open, for a configuration check before anything starts.
func CheckFakeFile(fakeFile string) error { return checkFake(fakeFile) }
