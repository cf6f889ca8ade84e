package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/gpuslice/gpuslice/pkg/dra"
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
	for _, b := range before {
		for _, n := range now {
			if n.UUID == b.UUID && (n.MIG.Current != b.MIG.Current || n.MIG.Pending != b.MIG.Pending) {
				return fmt.Sprintf("gpu %d (%s) MIG mode changed", b.Index, b.UUID)
			}
		}
	}
	// Instances, of the GPUs both reads have.
	present := func(devs, in []nvml.Device) []nvml.Device {
		var out []nvml.Device
		for _, d := range devs {
			if slices.ContainsFunc(in, func(o nvml.Device) bool { return o.UUID == d.UUID }) {
				out = append(out, d)
			}
		}
		return out
	}
	ids := func(devs []nvml.Device) []string {
		var out []string
		for name, in := range dra.NewMIGInstances(devs) {
			out = append(out, name+"="+in.UUID)
		}
		slices.Sort(out)
		return out
	}
	if a, b := ids(present(before, now)), ids(present(now, before)); !slices.Equal(a, b) {
		return fmt.Sprintf("MIG instances changed (%d before, %d now)", len(a), len(b))
	}
	return ""
}

// uuids lists the devices' UUIDs.
func uuids(devs []nvml.Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.UUID
	}
	return out
}
