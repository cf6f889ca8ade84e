package main

import (
	"context"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/pkg/labels"
	"github.com/gpuslice/gpuslice/pkg/nodeslices"
	"github.com/gpuslice/gpuslice/pkg/sampler"
)

// podPolicyRefresh is how often the node's pods' compute policy
// annotations are read.
const podPolicyRefresh = 30 * time.Second

// writeNode starts what the agent keeps on its Node: its labels, and,
// where the device plugin offers slices, the free slices per GPU that
// gpu-scheduler-extender places by.
func writeNode(ctx context.Context, g *errgroup.Group, cfg Resolved, client *kube.Client, gpus *gpus, enforcer *enforce.Enforcer, smp *sampler.Sampler, log *slog.Logger) {
	if cfg.NodeLabels {
		w := labels.NewWriter(client, cfg.NodeName, cfg.GFDLabels, log)
		desired := nodeLabels(cfg, gpus, enforcer, log)
		g.Go(func() error { w.Keep(ctx, desired); return nil })
	}
	if cfg.DRA.Enabled && cfg.DRA.ExtendedResource {
		return
	}
	pub := nodeslices.NewPublisher(client, cfg.NodeName, log)
	build := func() (contract.NodeSlices, bool) {
		s := smp.Snapshot()
		if s == nil || s.Time.IsZero() {
			return contract.NodeSlices{}, false
		}
		return nodeslices.From(s, cfg.ResourceName, cfg.Span, gpus.plugin.DRAHeld), true
	}
	g.Go(func() error { pub.Run(ctx, cfg.SampleInterval.Duration, build); return nil })
}
