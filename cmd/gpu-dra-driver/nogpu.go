package main

import (
	"context"
	"log/slog"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
	"github.com/gpuslice/gpuslice/pkg/health"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// idleWithoutGPUs is the driver on a node without GPUs (no driver library,
// or a driver that lists none), as the agent there: it publishes and
// prepares nothing and registers no plugin with the kubelet, says why in
// a warning, stays ready rather than crash-looping, and looks again every
// 15 probe intervals; once GPUs are there it exits with an error, for the
// kubelet to start it afresh to serve them.
func idleWithoutGPUs(ctx context.Context, cfg Config, reason string, cause error, probes *health.State, log *slog.Logger) error {
	every := 15 * cfg.Health.ProbeInterval.Duration
	log.Warn("no GPU on this node: nothing is published or prepared; looking again", "reason", reason, "err", cause, "every", every)
	probes.Set(func() error { return nil })
	return gpubackend.WaitForGPUs(ctx, func() (nvml.Backend, error) {
		b, _, err := openBackend(cfg, slog.New(slog.DiscardHandler))
		return b, err
	}, every)
}
