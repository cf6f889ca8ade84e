// Package nodeslices publishes a node's free slices per GPU on its Node
// (contract.NodeSlicesAnnotation), for gpu-scheduler-extender: From builds
// the value from one sample, Publisher keeps the annotation at it.
package nodeslices

import (
	"context"
	"log/slog"
	"sort"
	"strconv"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// FieldManager names the agent in the node's managed fields for the
// annotation.
const FieldManager = "gpuslice-agent-slices"

// From builds the annotation from one snapshot: each GPU's slices and
// free slices, and the containers whose slices the counts include. Slices
// of MIG instances are of resources of their own (nvidia.com/vgpu-mig-*)
// and left out. A GPU
// that is unhealthy, or that unavailable says serves no slices (DRA claims
// hold it), has none free.
func From(s *node.Snapshot, resource, span string, unavailable func(uuid string) bool) contract.NodeSlices {
	ns := contract.NodeSlices{Version: contract.NodeSlicesVersion, Resource: resource, Span: span,
		GPUs: make([]contract.GPUFree, 0, len(s.Devices)), Holders: []string{}}
	for _, d := range s.Devices {
		if d.Slices <= 0 || d.Instance != nil {
			continue // a MIG instance's slices are of a resource of their own
		}
		free := max(0, d.Slices-d.Allocated)
		if !d.Health.Healthy || (unavailable != nil && unavailable(d.UUID)) {
			free = 0
		}
		ns.GPUs = append(ns.GPUs, contract.GPUFree{UUID: d.UUID, Index: d.Index, Slices: d.Slices, Free: free})
	}
	sort.Slice(ns.GPUs, func(i, j int) bool { return ns.GPUs[i].Index < ns.GPUs[j].Index })
	seen := map[string]bool{}
	for _, c := range s.Containers {
		if c.Slices <= 0 || gpudev.IsMIGUUID(c.UUID) {
			continue
		}
		key := contract.HolderNameKey(c.Namespace, c.Pod, c.Container)
		if c.PodUID != "" {
			key = contract.HolderKey(c.PodUID, c.Container)
		}
		if !seen[key] {
			seen[key] = true
			ns.Holders = append(ns.Holders, key)
		}
	}
	sort.Strings(ns.Holders)
	return ns
}

// NodeAPI is what the publisher needs of the API server; *kube.Client has
// it.
type NodeAPI interface {
	PatchNode(ctx context.Context, name string, patch any, fieldManager string) error
}

// Publisher keeps one node's annotation at the latest value.
type Publisher struct {
	client NodeAPI
	node   string
	log    *slog.Logger
	// Resync is how often the value is written even when unchanged (it
	// comes back if someone removed it); Retry the first wait after a
	// failed write, doubling up to Resync.
	Resync, Retry time.Duration
	last          string
	written       time.Time
}

// NewPublisher returns a publisher for node.
func NewPublisher(client NodeAPI, nodeName string, log *slog.Logger) *Publisher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Publisher{client: client, node: nodeName, log: log, Resync: 5 * time.Minute, Retry: time.Second}
}

// Run calls build every interval until ctx ends and publishes its value
// while it changes; build returns false while there is nothing to publish
// (no sample taken yet, or no publisher: p nil). A value that cannot be
// written whole (over the size bound) is logged and the annotation
// removed, so the extender refuses the node rather than read a stale
// count.
func Run(ctx context.Context, p *Publisher, interval time.Duration, build func() (contract.NodeSlices, bool)) {
	var retry time.Duration
	if p != nil {
		retry = p.Retry
	}
	for {
		wait := interval
		if ns, ok := build(); ok && p != nil {
			if err := p.Publish(ctx, ns, time.Now()); err != nil && ctx.Err() == nil {
				p.log.Error("per-GPU free slices not published on the node; gpu-scheduler-extender places no pod here until they are", "err", err, "retry_in", retry)
				wait, retry = max(interval, retry), min(2*retry, p.Resync)
			} else {
				retry = p.Retry
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Publish writes ns on the node if it differs from what was last written
// or Resync has passed since.
func (p *Publisher) Publish(ctx context.Context, ns contract.NodeSlices, now time.Time) error {
	value, err := ns.Marshal()
	if err != nil {
		// Remove what is there: a stale value would undercount.
		if p.last != removed {
			if rmErr := p.write(ctx, nil, nil); rmErr != nil {
				return rmErr
			}
			p.last = removed
		}
		return err
	}
	if value == p.last && now.Sub(p.written) < p.Resync {
		return nil
	}
	if err := p.write(ctx, value, strconv.Itoa(ns.FreeMax())); err != nil {
		return err
	}
	p.last, p.written = value, now
	return nil
}

// removed is Publisher.last after the annotation was removed.
const removed = "\x00removed"

// write sets the annotation to value and the label to freeMax, or
// removes them for nil (a JSON merge patch's null), in one patch.
func (p *Publisher) write(ctx context.Context, value, freeMax any) error {
	patch := map[string]any{"metadata": map[string]any{
		"annotations": map[string]any{contract.NodeSlicesAnnotation: value},
		"labels":      map[string]any{contract.NodeSlicesFreeMaxLabel: freeMax},
	}}
	return p.client.PatchNode(ctx, p.node, patch, FieldManager)
}
