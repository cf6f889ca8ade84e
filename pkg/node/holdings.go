package node

import (
	"errors"
	"fmt"
	"maps"
	"sort"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Holding is what one container holds of one GPU, by every front end
// (device-plugin slices and DRA claims summed), and the limits that go
// with it: the one per-GPU share inside the agent. The accounting, the
// driver memory tier and the join all read it from HoldingsOf, so that no
// two of them can disagree on what a container was given.
type Holding struct {
	// Namespace, Pod and Container name the container.
	Namespace, Pod, Container string
	// UUID is the GPU's UUID; Index its index.
	UUID  string
	Index int
	// Slices of SlicesTotal, MemoryBytes and ComputeRatio are what it
	// holds of the GPU: what Allocate gave it (the kubelet's checkpoint)
	// or, without a readable checkpoint, its slice IDs read in the
	// layout; plus its share of each DRA claim it holds.
	Slices, SlicesTotal int
	MemoryBytes         uint64
	ComputeRatio        float64
	// Claims are the DRA claims ("namespace/name", sorted) through which
	// it holds the GPU; none for device-plugin slices.
	Claims []string
}

// Sources are what holdings are read from: the kubelet's and the DRA
// driver's records, read by the caller (the sampler each sample, the
// driver tier for one new container).
type Sources struct {
	// Assignments are pod-resources': each container's slice IDs and
	// claims.
	Assignments []Assignment
	// Checkpoint is the kubelet's device manager checkpoint, whose grants
	// win over the layout; nil when it could not be read.
	Checkpoint []CheckpointEntry
	// ResourceName is the resource whose slices are held.
	ResourceName string
	// Layout reads slice IDs; nil reads only which GPUs are held
	// (SlicedGPUs, ClaimedGPUs), each slice assignment a Problem.
	Layout *vgpu.Layout
	// Pending are GPUs (by UUID) the device plugin handed out slices of
	// that pod-resources may not list yet (the front ends' record of
	// recent grants); they count as sliced (SlicedGPUs).
	Pending map[string]bool
	// DRA counts the claims of gpuslice's DRA driver; Prepared is the
	// driver's record by claim UID.
	DRA      bool
	Prepared map[string]contract.PreparedClaim
	// Instances are the MIG instances in force by MIG UUID, in which the
	// assignments' Instances are read: each is held whole (one slice of
	// one, its memory, all of its compute). Nil reads none (the driver
	// tier, which sets no limit on MIG); an instance held that is not
	// here (destroyed since) is a Problem.
	Instances map[string]gpudev.InForce
}

// Holdings is who holds what share of which GPU on the node.
type Holdings struct {
	// Held is one entry per container and GPU it holds a share of, sorted
	// by namespace, pod, container and GPU index. Admin access to a GPU
	// holds nothing and makes no entry.
	Held []Holding
	// Allocated is the slices allocated of each GPU by UUID, a DRA claim's
	// counted once however many containers share it.
	Allocated map[string]int
	// Problems are the assignments that could not be read: slice IDs not
	// in the layout, a claim the record lacks.
	Problems []Problem
	// src is what they were read from, for SlicedGPUs and ClaimedGPUs,
	// which only the front ends' checks ask for.
	src Sources
}

// Of returns what the containers of one pod hold.
func (h Holdings) Of(namespace, pod string) []Holding {
	var out []Holding
	for _, x := range h.Held {
		if x.Namespace == namespace && x.Pod == pod {
			out = append(out, x)
		}
	}
	return out
}

// HoldingsOf reads who holds what from the sources, by the rules every
// tier shares: a container's device-plugin slices carry what Allocate
// gave it (LimitsFor: the checkpointed grant wins over the current
// layout), a DRA claim's share is split evenly among the containers
// holding it (ClaimLimits), and a container holding a GPU by both gets
// the sum.
func HoldingsOf(src Sources) Holdings {
	h := Holdings{Allocated: map[string]int{}, Held: make([]Holding, 0, len(src.Assignments)), src: src}
	granted := GrantsByDevices(src.Checkpoint, src.ResourceName)
	consumers := map[string]int{}
	if src.DRA {
		for _, a := range src.Assignments {
			for _, uid := range a.Claims {
				consumers[uid]++
			}
		}
	}
	counted := map[string]bool{}
	for _, a := range src.Assignments {
		var limits []vgpu.GPULimit
		if len(a.DeviceIDs) > 0 && src.Layout == nil {
			h.Problems = append(h.Problems, Problem{SourcePodResources, fmt.Errorf("%s/%s/%s: no slice layout to read its slices in", a.Namespace, a.Pod, a.Container)})
			continue
		}
		limits, ok := h.devicePluginLimits(src, a, granted)
		if !ok {
			continue
		}
		if src.DRA && len(a.Claims) > 0 {
			l, err := ClaimLimits(src.Layout, a.Claims, src.Prepared, consumers)
			if err != nil {
				h.Problems = append(h.Problems, Problem{SourceDRA, fmt.Errorf("%s/%s/%s: %w", a.Namespace, a.Pod, a.Container, err)})
			}
			limits = append(limits, l...)
			countClaims(h.Allocated, counted, a.Claims, src.Prepared)
		}
		var names map[string][]string
		if len(a.Claims) > 0 {
			names = claimNames(a.Claims, src.Prepared)
		}
		// One assignment is one container: what it holds of a GPU twice
		// (slices of the GPU and a claim on it, or two claims) is among
		// the entries made for it here.
		first := len(h.Held)
	limits:
		for _, l := range limits {
			for i := first; i < len(h.Held); i++ {
				if x := &h.Held[i]; x.UUID == l.UUID {
					x.Slices += l.Slices
					x.MemoryBytes += l.MemoryBytes
					x.ComputeRatio += l.ComputeRatio
					continue limits
				}
			}
			h.Held = append(h.Held, Holding{
				Namespace: a.Namespace, Pod: a.Pod, Container: a.Container,
				UUID: l.UUID, Index: l.Index, Slices: l.Slices, SlicesTotal: l.SlicesTotal,
				MemoryBytes: l.MemoryBytes, ComputeRatio: l.ComputeRatio, Claims: names[l.UUID],
			})
		}
	}
	sort.Slice(h.Held, func(i, j int) bool {
		a, b := &h.Held[i], &h.Held[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Pod != b.Pod {
			return a.Pod < b.Pod
		}
		if a.Container != b.Container {
			return a.Container < b.Container
		}
		if a.Index != b.Index {
			return a.Index < b.Index
		}
		return a.UUID < b.UUID // a GPU's MIG instances share its index
	})
	return h
}

// devicePluginLimits are what a container holds through device plugins
// (slices, MIG instances whole), counted as allocated; false when its
// slices cannot be read, which leaves the container out. Each failure is
// a Problem.
func (h *Holdings) devicePluginLimits(src Sources, a Assignment, granted map[string][]contract.Grant) ([]vgpu.GPULimit, bool) {
	var limits []vgpu.GPULimit
	if len(a.DeviceIDs) > 0 {
		l, err := LimitsFor(src.Layout, a.DeviceIDs, granted[DevicesKey(a.DeviceIDs)])
		if err != nil {
			h.Problems = append(h.Problems, Problem{SourcePodResources, fmt.Errorf("%s/%s/%s: %w", a.Namespace, a.Pod, a.Container, err)})
			return nil, false
		}
		limits = l
	}
	if len(a.Instances) > 0 && src.Instances != nil {
		l, err := instanceLimits(src.Instances, a.Instances)
		if err != nil {
			h.Problems = append(h.Problems, Problem{SourcePodResources, fmt.Errorf("%s/%s/%s: %w", a.Namespace, a.Pod, a.Container, err)})
		}
		limits = append(limits, l...)
	}
	for _, x := range limits {
		h.Allocated[x.UUID] += x.Slices
	}
	return limits, true
}

// instanceLimits are what holding MIG instances whole gives: each one
// slice of one, its memory and all of its compute (the hardware holds it
// to them). An instance not in force is an error; the others are
// returned.
func instanceLimits(inForce map[string]gpudev.InForce, ids []string) ([]vgpu.GPULimit, error) {
	out := make([]vgpu.GPULimit, 0, len(ids))
	var errs []error
	for _, id := range ids {
		in, ok := inForce[id]
		if !ok {
			errs = append(errs, fmt.Errorf("MIG instance %s is not in force on this node", id))
			continue
		}
		out = append(out, vgpu.GPULimit{UUID: id, Index: in.Parent.Index, Slices: 1, SlicesTotal: 1, MemoryBytes: in.MemoryBytes, ComputeRatio: 1})
	}
	return out, errors.Join(errs...)
}

// SlicedGPUs are the GPUs (by UUID) that the assignments' device-plugin
// slices are on, read from the slice IDs themselves so that a slicing
// change cannot hide one, and the Pending grants' GPUs. The DRA driver
// refuses claims on them.
func (h Holdings) SlicedGPUs() map[string]bool {
	sliced := maps.Clone(h.src.Pending)
	if sliced == nil {
		sliced = map[string]bool{}
	}
	for _, a := range h.src.Assignments {
		for _, id := range a.DeviceIDs {
			if s, err := vgpu.ParseSliceID(id); err == nil {
				sliced[s.UUID] = true
			}
		}
	}
	return sliced
}

// ClaimedGPUs are the GPUs (by UUID) that the DRA driver's prepared claims
// hold a share of (with DRA), whether or not a container of theirs runs
// yet; admin access holds none. The device plugin withholds their slices.
func (h Holdings) ClaimedGPUs() map[string]bool {
	claimed := map[string]bool{}
	if !h.src.DRA {
		return claimed
	}
	for _, c := range h.src.Prepared {
		shares, _ := ClaimGPUs(c)
		for uuid := range shares {
			claimed[uuid] = true
		}
	}
	return claimed
}

// claimNames are, per GPU, the claims ("namespace/name", sorted) that
// hold a share of it.
func claimNames(claims []string, prepared map[string]contract.PreparedClaim) map[string][]string {
	out := map[string][]string{}
	for _, uid := range claims {
		c, ok := prepared[uid]
		if !ok {
			continue
		}
		for _, g := range c.Grants {
			if !g.Admin {
				out[g.UUID] = append(out[g.UUID], c.Namespace+"/"+c.Name)
			}
		}
	}
	for _, n := range out {
		sort.Strings(n)
	}
	return out
}

// countClaims adds to allocated the slices of each claim not counted yet.
func countClaims(allocated map[string]int, counted map[string]bool, claims []string, prepared map[string]contract.PreparedClaim) {
	for _, uid := range claims {
		c, ok := prepared[uid]
		if !ok || counted[uid] {
			continue
		}
		counted[uid] = true
		for _, g := range c.Grants {
			allocated[g.UUID] += g.Slices
		}
	}
}
