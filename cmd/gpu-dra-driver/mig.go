package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// followMIG reads the GPUs every interval and returns an error once a
// GPU's MIG mode or MIG instances differ from what the driver published
// at its start: the DaemonSet starts it again, and it publishes the
// GPUs as they are (prepared claims survive in their record). A destroyed
// instance is thereby never published for long; one a claim still holds
// stays in the record until the claim is unprepared.
func followMIG(ctx context.Context, backend nvml.Backend, published []nvml.Device, interval time.Duration, log *slog.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		devs, err := backend.Devices()
		if err != nil && len(devs) == 0 {
			log.Warn("gpus not re-read for MIG layout changes", "err", err)
			continue
		}
		if why := migChanged(published, devs); why != "" {
			return fmt.Errorf("%s: the driver restarts to publish the GPUs anew", why)
		}
	}
}

// migChanged says how the GPUs' MIG modes or instances differ between two
// reads; "" when they do not. A GPU missing from one read (lost) is not a
// change.
func migChanged(before, now []nvml.Device) string {
	if why := nvml.MIGModeChange(before, now); why != "" {
		return why
	}
	if nvml.MIGInstancesChanged(before, now) {
		return "MIG instances changed"
	}
	return ""
}
