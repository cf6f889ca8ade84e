package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
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
	set, err := deviceplugin.NewMIGSet(devs, cfg.MIGStrategy, opts, backend.Devices)
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
		if why := migModeChanged(g.devs, devs); why != "" {
			return fmt.Errorf("%s: the agent restarts to cut its GPUs anew", why)
		}
		if sameInstances(*g.current.Load(), devs) {
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

// migModeChanged says which GPU's MIG mode (in force or pending) differs
// between two reads; "" when none. A GPU missing from one read (lost) is
// not a mode change.
func migModeChanged(before, now []nvml.Device) string {
	for _, b := range before {
		for _, n := range now {
			if n.UUID == b.UUID && (n.MIG.Current != b.MIG.Current || n.MIG.Pending != b.MIG.Pending) {
				return fmt.Sprintf("gpu %d (%s) MIG mode changed (in force %v -> %v, pending %v -> %v)",
					b.Index, b.UUID, b.MIG.Current, n.MIG.Current, b.MIG.Pending, n.MIG.Pending)
			}
		}
	}
	return ""
}

// sameInstances reports whether two reads hold the same MIG instances.
func sameInstances(a, b []nvml.Device) bool {
	ids := func(devs []nvml.Device) []string {
		var out []string
		for _, d := range devs {
			for _, in := range d.MIG.Instances {
				out = append(out, d.UUID+"/"+in.UUID+"/"+in.Profile)
			}
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(ids(a), ids(b))
}

// uuids lists the devices' UUIDs.
func uuids(devs []nvml.Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.UUID
	}
	return out
}
