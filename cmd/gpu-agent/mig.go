package main

import (
	"context"
	"fmt"
	"log/slog"
	"sort"

	"golang.org/x/sync/errgroup"

	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// openMIG builds one device plugin per resource the node's MIG instances
// are offered under (--mig-strategy), ordered by resource name, and logs
// each GPU in MIG mode: it is never cut into whole-GPU slices.
func openMIG(cfg Resolved, devs []nvml.Device, log *slog.Logger) ([]*deviceplugin.MIGPlugin, error) {
	for _, d := range devs {
		if d.MIG.Enabled() {
			log.Info("gpu in MIG mode: not cut into slices", "gpu", d.Index, "uuid", d.UUID, "mig_current", d.MIG.Current,
				"mig_pending", d.MIG.Pending, "mig_instances", len(d.MIG.Instances), "mig_strategy", cfg.MIGStrategy)
		}
	}
	byResource, err := deviceplugin.MIGResources(devs, cfg.MIGStrategy)
	if err != nil {
		return nil, fmt.Errorf("--mig-strategy: %w", err)
	}
	resources := make([]string, 0, len(byResource))
	for r := range byResource {
		resources = append(resources, r)
	}
	sort.Strings(resources)
	opts := cfg.Plugin
	opts.Logger = log
	plugins := make([]*deviceplugin.MIGPlugin, 0, len(resources))
	for _, r := range resources {
		p, err := deviceplugin.NewMIG(r, byResource[r], opts)
		if err != nil {
			return nil, err
		}
		plugins = append(plugins, p)
	}
	return plugins, nil
}

// runMIG serves every MIG plugin in g until ctx ends.
func runMIG(ctx context.Context, g *errgroup.Group, plugins []*deviceplugin.MIGPlugin) {
	for _, p := range plugins {
		g.Go(func() error { return p.Run(ctx) })
	}
}

// migConnected fails while a MIG plugin is not registered with a live
// kubelet.
func migConnected(plugins []*deviceplugin.MIGPlugin) error {
	for _, p := range plugins {
		if !p.Connected() {
			return fmt.Errorf("the device plugin for %s is not registered with a live kubelet", p.Resource())
		}
	}
	return nil
}

// subscribeMIG feeds GPU health to every MIG plugin.
func subscribeMIG(h interface{ Subscribe(func(nvml.Health)) }, plugins []*deviceplugin.MIGPlugin) {
	for _, p := range plugins {
		h.Subscribe(p.SetHealth)
	}
}

// uuids lists the devices' UUIDs.
func uuids(devs []nvml.Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.UUID
	}
	return out
}
