// Package kubeletstate is the one reader of who holds what share of which
// GPU: it reads the kubelet's records (pod-resources, the device manager's
// checkpoint with the grants Allocate gave) and the DRA driver's record of
// prepared claims, and turns them into node.Holdings by node.HoldingsOf.
// The per-sample pass (Reader.Read, for the sampler) and a new
// container's driver memory limit (Pods.Holdings, for the driver tier)
// both go through it, so the two can never hold one container to
// different shares.
package kubeletstate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Lister lists which containers hold which slices and claims;
// *podresources.Client is one.
type Lister interface {
	List(ctx context.Context) ([]podresources.Assignment, error)
}

// PodUIDs names the node's pods by UID, as the API server last listed
// them; *podpolicy.Watcher is one.
type PodUIDs interface {
	// PodUIDs returns the UIDs by namespace and name, nil when no list
	// was read. The map is not changed after it is returned.
	PodUIDs() map[node.PodName]string
}

// Options say where the records are.
type Options struct {
	// PluginDir holds the kubelet's device manager checkpoint.
	PluginDir string
	// ResourceName is the resource whose slices are held.
	ResourceName string
	Layout       *vgpu.Layout
	// Assignments is pod-resources.
	Assignments Lister
	// DRA reads, besides pod-resources' claims, the DRA driver's record
	// at PreparedClaims, and takes the node's pod UIDs from Pods; Pods nil
	// names pods by the runtime's records alone.
	DRA            bool
	PreparedClaims string
	Pods           PodUIDs
}

// sources are the holdings sources of one read.
func (o Options) sources(as []podresources.Assignment, cp []node.CheckpointEntry, prepared map[string]contract.PreparedClaim) node.Sources {
	return node.Sources{Assignments: as, Checkpoint: cp, ResourceName: o.ResourceName, Layout: o.Layout, DRA: o.DRA, Prepared: prepared}
}

// Pods reads what the containers of one pod hold, for the driver memory
// tier, the moment the runtime creates a container. It is not safe for
// concurrent use: the tier's watch goroutine alone calls it.
type Pods struct {
	opts   Options
	record *PreparedClaims
}

// NewPods returns a reader of one pod's holdings.
func NewPods(o Options) *Pods {
	return &Pods{opts: o, record: NewPreparedClaims(o.PreparedClaims)}
}

// Holdings returns what the containers of pod (named as the runtime's
// record names it) hold, by node.HoldingsOf on the same sources the
// per-sample pass reads. The device manager's checkpoint says which
// slices the pod's UID holds and what Allocate gave each container (the
// kubelet writes it before it creates the container); with DRA,
// pod-resources says which claims the pod's containers reference, and the
// driver's record what each holds. An error means what the pod holds
// cannot be told now.
func (p *Pods) Holdings(ctx context.Context, pod events.Pod) ([]node.Holding, error) {
	entries, err := ReadCheckpoint(p.opts.PluginDir)
	if errors.Is(err, fs.ErrNotExist) {
		// The kubelet writes it once its device manager runs (the agent's
		// own plugin registers there): missing, what a pod holds cannot
		// be told, as the sampler judges it too.
		return nil, fmt.Errorf("the kubelet's device-manager checkpoint in %s is missing (a --device-plugin-dir that is not the kubelet's, or a kubelet that has not started): %w", p.opts.PluginDir, err)
	}
	if err != nil {
		return nil, err
	}
	var as []podresources.Assignment
	byContainer := map[string]int{}
	for _, e := range entries {
		if e.PodUID != pod.UID || !contract.IsSliceResource(p.opts.ResourceName, e.Resource) {
			continue
		}
		byContainer[e.Container] = len(as)
		as = append(as, podresources.Assignment{Namespace: pod.Namespace, Pod: pod.Name, Container: e.Container, DeviceIDs: e.DeviceIDs})
	}
	var prepared map[string]contract.PreparedClaim
	if p.opts.DRA {
		if as, prepared, err = p.claims(ctx, pod, as, byContainer); err != nil {
			return nil, err
		}
	}
	h := node.HoldingsOf(p.opts.sources(as, entries, prepared))
	var errs []error
	for _, pr := range h.Problems {
		errs = append(errs, pr.Err)
	}
	return h.Of(pod.Namespace, pod.Name), errors.Join(errs...)
}

// claims adds to the pod's assignments (as, by container) the claims
// pod-resources lists for its containers, and the other containers that
// hold any of those claims (a claim's share is split among all that hold
// it), and returns the driver's record. A pod holding no claim costs one
// List.
func (p *Pods) claims(ctx context.Context, pod events.Pod, as []podresources.Assignment, byContainer map[string]int) ([]podresources.Assignment, map[string]contract.PreparedClaim, error) {
	listed, err := p.opts.Assignments.List(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("pod-resources: %w", err)
	}
	ours := map[string]bool{}
	for _, a := range listed {
		if a.Namespace != pod.Namespace || a.Pod != pod.Name || len(a.Claims) == 0 {
			continue
		}
		for _, uid := range a.Claims {
			ours[uid] = true
		}
		if i, ok := byContainer[a.Container]; ok {
			as[i].Claims = a.Claims
		} else {
			as = append(as, podresources.Assignment{Namespace: a.Namespace, Pod: a.Pod, Container: a.Container, Claims: a.Claims})
		}
	}
	if len(ours) == 0 {
		return as, nil, nil
	}
	for _, a := range listed {
		if a.Namespace == pod.Namespace && a.Pod == pod.Name {
			continue
		}
		var shared []string
		for _, uid := range a.Claims {
			if ours[uid] {
				shared = append(shared, uid)
			}
		}
		if len(shared) > 0 {
			as = append(as, podresources.Assignment{Namespace: a.Namespace, Pod: a.Pod, Container: a.Container, Claims: shared})
		}
	}
	rec, err := p.record.Read()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("pod %s/%s holds DRA claims the driver has not recorded: %w", pod.Namespace, pod.Name, err)
	}
	if err != nil {
		return nil, nil, err
	}
	return as, rec.Claims, nil
}

// State is one read of the records for the per-sample pass: what the join
// and node.HoldingsOf read (node.Input), and what could not be read.
type State struct {
	// Assignments are pod-resources', or the last known when the kubelet
	// does not answer (so that a kubelet restart does not make every
	// container's series vanish and reappear).
	Assignments []podresources.Assignment
	// Checkpoint is the device manager's; nil when it does not exist.
	Checkpoint []node.CheckpointEntry
	DRA        node.DRA
	// Stale says which files are a last copy read whole.
	Stale node.Stale
	// Problems are the reads that failed, by source.
	Problems []node.Problem
}

// Reader reads the records sample after sample, parsing a file only when
// it was replaced. A file that exists and cannot be read whole (torn,
// garbage, a newer format) is replaced by its last copy read whole (fail
// closed: what runs keeps its holdings), and State.Stale says so. It is
// not safe for concurrent use: the sampler reads one sample at a time.
type Reader struct {
	opts        Options
	checkpoint  *Checkpoint
	prepared    *PreparedClaims
	assignments []podresources.Assignment
	good        struct {
		checkpoint []node.CheckpointEntry
		prepared   map[string]contract.PreparedClaim
	}
}

// NewReader returns a reader of the records the options name.
func NewReader(o Options) *Reader {
	return &Reader{opts: o, checkpoint: NewCheckpoint(o.PluginDir), prepared: NewPreparedClaims(o.PreparedClaims)}
}

// Read reads pod-resources, the device manager's checkpoint and, with
// DRA, the driver's record (after pod-resources: the driver records a
// claim before the kubelet lists it, and forgets it after, so a claim
// pod-resources lists is in the record read after it) and the pods' UIDs
// as last listed.
func (r *Reader) Read(ctx context.Context) State {
	var st State
	if a, err := r.opts.Assignments.List(ctx); err != nil {
		st.Problems = append(st.Problems, node.Problem{Source: node.SourcePodResources, Err: err})
	} else {
		r.assignments = a
	}
	st.Assignments = r.assignments
	checkpoint, err := r.checkpoint.Read()
	switch {
	case err == nil:
		st.Checkpoint, r.good.checkpoint = checkpoint, checkpoint
	case errors.Is(err, fs.ErrNotExist):
		// None yet (no device allocated since the kubelet started), or
		// gone: what is held cannot be told.
		st.Problems = append(st.Problems, node.Problem{Source: node.SourceCheckpoint, Err: err})
	default:
		st.Problems = append(st.Problems, node.Problem{Source: node.SourceCheckpoint, Err: fmt.Errorf("%w; the last copy read whole holds", err)})
		st.Checkpoint, st.Stale.Checkpoint = r.good.checkpoint, r.good.checkpoint != nil
	}
	if r.opts.DRA {
		st.DRA = r.readDRA(&st)
	}
	return st
}

// readDRA reads the driver's record and the pods' UIDs.
func (r *Reader) readDRA(st *State) node.DRA {
	d := node.DRA{Enabled: true}
	if r.opts.Pods != nil {
		d.PodUIDs = r.opts.Pods.PodUIDs()
	}
	prepared, err := r.prepared.Read()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// No claim prepared yet. A claim missing from the record makes
		// its pod unknown, never unauthorized, so nothing is assumed.
		d.Prepared = map[string]contract.PreparedClaim{}
	case err != nil:
		st.Problems = append(st.Problems, node.Problem{Source: node.SourceDRA, Err: fmt.Errorf("%w; the last copy read whole holds", err)})
		d.Prepared, st.Stale.Prepared = r.good.prepared, r.good.prepared != nil
	default:
		d.Prepared, r.good.prepared = prepared.Claims, prepared.Claims
	}
	return d
}
