package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// openMIG builds the device plugins of the node's MIG instances
// (--mig-strategy), one per resource, and logs each GPU in MIG mode: it is
// never cut into whole-GPU slices.
func openMIG(cfg Resolved, backend nvml.Backend, devs []nvml.Device, log *slog.Logger) (*deviceplugin.MIGSet, error) {
	for _, d := range devs {
		if d.MIG.Enabled() {
			log.Info("gpu in MIG mode: not cut into slices", "gpu", d.Index, "uuid", d.UUID, "mig_current", d.MIG.Current,
				"mig_pending", d.MIG.Pending, "mig_instances", len(d.MIG.Instances), "mig_strategy", cfg.MIGStrategy)
		}
	}
	opts := cfg.Plugin
	opts.Logger = log
	set, err := deviceplugin.NewMIGSet(devs, cfg.MIGStrategy, cfg.Slicing, opts, backend.Devices)
	if err != nil {
		return nil, fmt.Errorf("--mig-strategy=%s: %w", cfg.MIGStrategy, err)
	}
	return set, nil
}

// followMIG reads the GPUs every interval and follows their MIG layouts:
// instances created or destroyed are offered or withdrawn at once, and the
// node's labels follow (changed is signalled). A GPU whose MIG mode
// changes is a GPU to cut anew, which the agent does from the start: it
// returns an error saying so, and the agent exits for its DaemonSet to
// start it again. Pods keep their devices across the restart.
func followMIG(ctx context.Context, g *gpus, interval time.Duration, changed chan<- struct{}, log *slog.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		devs, err := g.backend.Devices()
		if err != nil && len(devs) == 0 {
			log.Warn("gpus not re-read for MIG layout changes", "err", err)
			continue
		}
		if why := nvml.MIGModeChange(g.devs, devs); why != "" {
			return fmt.Errorf("%s: the agent restarts to cut its GPUs anew", why)
		}
		if why := g.mig.SlicedChange(devs); why != "" {
			return fmt.Errorf("%s: the agent restarts to cut its instances anew", why)
		}
		if !nvml.MIGInstancesChanged(*g.current.Load(), devs) {
			continue
		}
		if err := g.mig.Update(devs); err != nil {
			log.Error("MIG layout changed and cannot be offered", "err", err)
			continue
		}
		g.current.Store(&devs)
		log.Info("MIG layout changed; instances offered anew", "mig_resources", g.mig.Resources())
		select {
		case changed <- struct{}{}:
		default:
		}
	}
}
