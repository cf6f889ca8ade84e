// Package gpubackend opens the GPU backend a binary was asked for: NVML
// over the driver, or the built-in fake GPU node. gpu-agent and
// gpu-dra-driver open theirs the same way, so the same flags mean the
// same GPUs to both.
package gpubackend

import (
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/test/fakegpu"
)

// NVML is the kind that opens the driver's NVML; any other kind opens the
// fake GPU node.
const NVML = "nvml"

// Open returns NVML's backend for kind NVML; otherwise the fake node
// described by fakeFile (the default node when it is empty), returned a
// second time so its file can be watched for faults.
func Open(kind, fakeFile string, o nvml.Options) (nvml.Backend, *fakegpu.Node, error) {
	if kind == NVML {
		b, err := nvml.New(o)
		if err != nil {
			return nil, nil, err
		}
		return b, nil, nil
	}
	fc := fakegpu.DefaultConfig()
	if fakeFile != "" {
		var err error
		if fc, err = fakegpu.LoadFile(fakeFile); err != nil {
			return nil, nil, err
		}
	}
	node, err := fakegpu.New(fc)
	if err != nil {
		return nil, nil, err
	}
	return node, node, nil
}
