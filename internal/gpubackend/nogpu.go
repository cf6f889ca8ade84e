package gpubackend

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// ErrNoGPUs is a driver that answered and lists no GPU.
var ErrNoGPUs = errors.New("no GPUs found on this node")

// Why a node has no GPU to serve.
const (
	// NoDriver: no NVIDIA driver library.
	NoDriver = "no-driver"
	// NoDevice: a driver that lists no GPU.
	NoDevice = "no-device"
)

// NoGPUReason says why err means the node has no GPU to serve (NoDriver,
// NoDevice), or "" when err is another failure, which still stops the
// program.
func NoGPUReason(err error) string {
	switch {
	case errors.Is(err, nvml.ErrLibraryNotFound):
		return NoDriver
	case errors.Is(err, ErrNoGPUs):
		return NoDevice
	}
	return ""
}

// WaitForGPUs opens the backend with open every interval until it lists
// GPUs, then returns an error saying so (for the program to exit and be
// started afresh to serve them); it returns nil when ctx ends.
func WaitForGPUs(ctx context.Context, open func() (nvml.Backend, error), every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		b, err := open()
		if err != nil {
			continue
		}
		devs, _ := b.Devices()
		_ = b.Close() // only counted
		if len(devs) > 0 {
			return fmt.Errorf("%d GPUs appeared on this node: restarting to serve them", len(devs))
		}
	}
}
