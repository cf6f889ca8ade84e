// Package uninstall undoes what gpu-agent leaves on a cluster, for the
// chart's pre-delete hook: it deletes the agent's DaemonSet in the
// foreground and waits for its pods to end (each agent thaws what it froze
// and removes its socket as it stops), then removes from each node the
// labels the agents' field managers alone set (by the node's
// managedFields): never GFD's or NFD's, never a node no agent ran on. Labels are removed only after the agents are
// gone, or an agent's resync would put them back. With the DRA driver, its
// DaemonSet goes the same way, then the ResourceSlices it published: left
// behind, they would keep offering GPUs no driver prepares.
package uninstall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/pkg/labels"
)

// API is what Run needs from the API server; *kube.Client has it.
type API interface {
	DeleteDaemonSet(ctx context.Context, namespace, name string) error
	DaemonSetExists(ctx context.Context, namespace, name string) (bool, error)
	Nodes(ctx context.Context) ([]kube.Meta, error)
	PatchNode(ctx context.Context, name string, patch any, fieldManager string) error
	DeleteResourceSlices(ctx context.Context, driver string) error
}

// Options say what to undo.
type Options struct {
	// Namespace and DaemonSet name the agent's DaemonSet.
	Namespace, DaemonSet string
	// GFD says the agents wrote the GFD-compatible labels (--gfd-labels).
	// Those are removed only where the agents' field managers alone set
	// them, whatever GFD says: it is kept so that older hooks still parse.
	GFD bool
	// DRADaemonSet, when set, names the DRA driver's DaemonSet in
	// Namespace; DRADriver the driver whose ResourceSlices are deleted
	// once it is gone.
	DRADaemonSet, DRADriver string
	// Poll is how often Run checks that the DaemonSet is gone.
	Poll time.Duration
}

// Run deletes the DaemonSet, waits until it is gone or ctx ends, and
// removes the agents' labels from every node. It returns how many nodes it
// changed. Run again after a failure, it does what is left.
func Run(ctx context.Context, api API, o Options, log *slog.Logger) (int, error) {
	if o.Namespace == "" || o.DaemonSet == "" {
		return 0, errors.New("uninstall: the DaemonSet's namespace and name are required")
	}
	if o.DRADaemonSet != "" && o.DRADriver == "" {
		return 0, errors.New("uninstall: the DRA driver's name is required with its DaemonSet")
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if err := deleteAndWait(ctx, api, o, o.DaemonSet, log); err != nil {
		return 0, err
	}
	if o.DRADaemonSet != "" {
		if err := deleteAndWait(ctx, api, o, o.DRADaemonSet, log); err != nil {
			return 0, err
		}
		if err := api.DeleteResourceSlices(ctx, o.DRADriver); err != nil {
			return 0, fmt.Errorf("delete the ResourceSlices of %s: %w", o.DRADriver, err)
		}
		log.Info("DRA driver's ResourceSlices deleted", "driver", o.DRADriver)
	}
	nodes, err := api.Nodes(ctx)
	if err != nil {
		return 0, fmt.Errorf("list nodes: %w", err)
	}
	changed := 0
	var errs []error
	for _, n := range nodes {
		patch := owned(n)
		if _, ok := n.Labels[contract.NodeSlicesFreeMaxLabel]; ok {
			patch[contract.NodeSlicesFreeMaxLabel] = nil // beside the annotation below
		}
		if _, ok := n.Labels[contract.NodeRecheckLabel]; ok {
			patch[contract.NodeRecheckLabel] = nil // gpu-scheduler-extender's
		}
		meta := map[string]any{}
		if len(patch) > 0 {
			meta["labels"] = patch
		}
		// The agent's free slices per GPU, for gpu-scheduler-extender.
		if _, ok := n.Annotations[contract.NodeSlicesAnnotation]; ok {
			meta["annotations"] = map[string]any{contract.NodeSlicesAnnotation: nil}
		}
		if len(meta) == 0 {
			continue // never labelled by an agent, or labelled by GFD and NFD alone
		}
		if err := api.PatchNode(ctx, n.Name, map[string]any{"metadata": meta}, labels.FieldManager); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
			continue
		}
		changed++
		log.Info("node labels removed", "node", n.Name, "labels", len(patch), "slices_annotation", meta["annotations"] != nil)
	}
	return changed, errors.Join(errs...)
}

// owned is the merge patch removing the labels on n that the agents' field
// managers alone set (its managedFields say so), gpuslice.io labels
// included: a label GFD or NFD set too, or one set on a node no agent ran
// on, is never touched.
func owned(n kube.Meta) map[string]any {
	owners := n.LabelOwners()
	out := map[string]any{}
	for k := range n.Labels {
		if labels.Ours(owners[k]) {
			out[k] = nil
		}
	}
	return out
}

// deleteAndWait deletes a DaemonSet of the release in the foreground and
// waits until it is gone or ctx ends.
func deleteAndWait(ctx context.Context, api API, o Options, name string, log *slog.Logger) error {
	if err := api.DeleteDaemonSet(ctx, o.Namespace, name); err != nil {
		return fmt.Errorf("delete DaemonSet %s/%s: %w", o.Namespace, name, err)
	}
	log.Info("daemonset deleted; waiting for its pods to stop", "namespace", o.Namespace, "daemonset", name)
	for {
		exists, err := api.DaemonSetExists(ctx, o.Namespace, name)
		if err == nil && !exists {
			return nil
		}
		if err != nil {
			log.Warn("checking the DaemonSet", "daemonset", name, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the DaemonSet %s/%s is still there: %w", o.Namespace, name, ctx.Err())
		case <-time.After(o.Poll):
		}
	}
}
