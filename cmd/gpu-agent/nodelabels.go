package main

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
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
// gpu-scheduler-extender places by, and (--span=never) the allocatable
// slices at once when a hold-back starts or ends. Each sample also tells
// the device plugin which GPUs have room, which ends a hold-back as soon
// as the refused request fits.
func writeNode(ctx context.Context, g *errgroup.Group, cfg Resolved, client *kube.Client, gpus *gpus, enforcer *enforce.Enforcer, smp *sampler.Sampler, layoutChanged <-chan struct{}, log *slog.Logger) {
	if client != nil && cfg.NodeLabels {
		w := labels.NewWriter(client, cfg.NodeName, cfg.GFDLabels, log)
		desired := func() map[string]string { return nodeLabels(cfg, gpus, enforcer, log) }
		g.Go(func() error { w.Follow(ctx, desired, layoutChanged); return nil })
	}
	if cfg.DRA.Enabled && cfg.DRA.ExtendedResource {
		return
	}
	if client != nil && cfg.Span == contract.SpanNever {
		g.Go(func() error { tellAllocatable(ctx, client, cfg, gpus, log); return nil })
	}
	var pub *nodeslices.Publisher
	if client != nil {
		pub = nodeslices.NewPublisher(client, cfg.NodeName, log)
	}
	build := func() (contract.NodeSlices, bool) {
		s := smp.Snapshot()
		if s == nil || s.Time.IsZero() {
			return contract.NodeSlices{}, false
		}
		ns := nodeslices.From(s, cfg.ResourceName, cfg.Span, gpus.plugin.DRAHeld)
		gpus.plugin.Room(ns.FreeByGPU())
		return ns, pub != nil
	}
	g.Go(func() error { nodeslices.Run(ctx, pub, cfg.SampleInterval.Duration, build); return nil })
}

// tellAllocatable writes the node's allocatable slices to its status each
// time a --span=never hold-back starts or ends, the latest value only: the
// kubelet writes the same value at its next node status update (every 10 s
// by default), and until then the scheduler keeps sending the refused pod,
// or its ReplicaSet's next, to fail admission again.
func tellAllocatable(ctx context.Context, client *kube.Client, cfg Resolved, gpus *gpus, log *slog.Logger) {
	var latest atomic.Int64
	changed := make(chan struct{}, 1)
	gpus.plugin.OnOffered(func(n int) {
		latest.Store(int64(n))
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		n := strconv.FormatInt(latest.Load(), 10)
		patch := map[string]any{"status": map[string]any{"allocatable": map[string]string{cfg.ResourceName: n}}}
		if err := client.PatchNodeStatus(ctx, cfg.NodeName, patch, nodeslices.FieldManager); err != nil {
			log.Warn("allocatable slices not written to the node's status; the kubelet writes them at its next node status update", "allocatable", n, "err", err)
		}
	}
}
