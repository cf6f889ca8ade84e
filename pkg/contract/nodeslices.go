package contract

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// NodeSlicesAnnotation is the Node annotation where gpu-agent publishes
// its node's free slices per GPU, for gpu-scheduler-extender: the
// scheduler sees only a node's total of free slices, which does not say
// whether one GPU can hold a request.
const NodeSlicesAnnotation = "gpuslice.io/slices"

// NodeSlicesFreeMaxLabel is the Node label gpu-agent sets beside the
// annotation: the most free slices any one GPU of the node has. The
// scheduler requeues the pods it could not place (a pod the extender
// refused among them) on a node's label changes, never on annotation
// changes alone, so a GPU that frees enough for a pending pod changes
// this label and the pod is tried again at once, rather than minutes
// later. Outside the gpuslice.io/ prefix, whose labels the agent's label
// writer keeps to its own set.
const NodeSlicesFreeMaxLabel = "slices.gpuslice.io/free-max"

// NodeRecheckLabel is the Node label gpu-scheduler-extender gives a new
// value to wake the scheduler: when its own cache gets a node's change
// after the scheduler tried a pending pod again on that change (the
// extender refused it on the older state) and the pod fits there now. A
// label change is what makes the scheduler try pending pods again; the
// extender writes it only once its cache holds the change.
const NodeRecheckLabel = "slices.gpuslice.io/recheck"

// SpanAnnotation is the pod annotation with which a pod opts in to
// spanning GPUs ("fewest") when no one GPU on a node can hold a
// container's request; the extender honours it on nodes whose --span is
// fewest. Without it the extender places a request only where one GPU
// holds it.
const SpanAnnotation = "gpuslice.io/span"

// The node's choices of what the device plugin does with a request no one
// GPU can hold (--span).
const (
	// SpanFewest spans the fewest GPUs that hold it (the default).
	SpanFewest = "fewest"
	// SpanNever refuses it: the pod fails admission.
	SpanNever = "never"
)

// ParseSpan accepts SpanFewest and SpanNever; empty is SpanFewest.
func ParseSpan(s string) (string, error) {
	switch s {
	case "", SpanFewest:
		return SpanFewest, nil
	case SpanNever:
		return SpanNever, nil
	}
	return "", fmt.Errorf("span %q: want %s or %s", s, SpanFewest, SpanNever)
}

// NodeSlicesVersion is the annotation's format.
const NodeSlicesVersion = 1

// MaxNodeSlicesBytes bounds the annotation the agent writes and the
// extender reads (the API server allows 256 KiB for all of a Node's
// annotations together).
const MaxNodeSlicesBytes = 64 << 10

// NodeSlices is the annotation: one node's GPUs with their free slices,
// and the containers whose slices the counts include, all from one sample
// of the agent, so that the extender can count a pod bound to the node
// but not among Holders as still to come out of the free slices.
type NodeSlices struct {
	Version int `json:"v"`
	// Resource is the extended resource the slices are offered as.
	Resource string `json:"resource"`
	// Span is the node's --span.
	Span string `json:"span"`
	// GPUs are the node's GPUs in index order.
	GPUs []GPUFree `json:"gpus"`
	// Holders are the containers holding slices, each as
	// HolderKey(podUID, container), or with the pod's UID unknown as
	// "namespace/pod/container".
	Holders []string `json:"holders"`
}

// GPUFree is one GPU's slices. Free is 0 on a GPU no slice of which may
// be handed out (unhealthy, or serving DRA claims).
type GPUFree struct {
	UUID   string `json:"uuid"`
	Index  int    `json:"index"`
	Slices int    `json:"slices"`
	Free   int    `json:"free"`
}

// HolderKey is how NodeSlices names a container whose pod's UID is known.
func HolderKey(podUID, container string) string { return podUID + "/" + container }

// HolderNameKey is how NodeSlices names a container whose pod's UID is not
// known.
func HolderNameKey(namespace, pod, container string) string {
	return namespace + "/" + pod + "/" + container
}

// ErrBadNodeSlices is an annotation that cannot be read.
var ErrBadNodeSlices = errors.New("bad node slices annotation")

// ParseNodeSlices reads the annotation, refusing what the agent never
// writes: another version, a count out of range, a GPU twice.
func ParseNodeSlices(s string) (NodeSlices, error) {
	var ns NodeSlices
	if len(s) > MaxNodeSlicesBytes {
		return NodeSlices{}, fmt.Errorf("%w: %d bytes, more than %d", ErrBadNodeSlices, len(s), MaxNodeSlicesBytes)
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ns); err != nil {
		return NodeSlices{}, fmt.Errorf("%w: %w", ErrBadNodeSlices, err)
	}
	if dec.More() {
		return NodeSlices{}, fmt.Errorf("%w: trailing data", ErrBadNodeSlices)
	}
	if err := ns.Validate(); err != nil {
		return NodeSlices{}, err
	}
	return ns, nil
}

// Validate reports the first thing the agent would never write.
func (ns NodeSlices) Validate() error {
	if ns.Version != NodeSlicesVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrBadNodeSlices, ns.Version, NodeSlicesVersion)
	}
	if ns.Resource == "" {
		return fmt.Errorf("%w: no resource", ErrBadNodeSlices)
	}
	if _, err := ParseSpan(ns.Span); err != nil || ns.Span == "" {
		return fmt.Errorf("%w: span %q", ErrBadNodeSlices, ns.Span)
	}
	seen := make(map[string]bool, len(ns.GPUs))
	for _, g := range ns.GPUs {
		switch {
		case g.UUID == "" || seen[g.UUID]:
			return fmt.Errorf("%w: GPU %q empty or twice", ErrBadNodeSlices, g.UUID)
		case g.Slices <= 0 || g.Slices > 1024:
			return fmt.Errorf("%w: GPU %s has %d slices", ErrBadNodeSlices, g.UUID, g.Slices)
		case g.Free < 0 || g.Free > g.Slices:
			return fmt.Errorf("%w: GPU %s has %d of %d slices free", ErrBadNodeSlices, g.UUID, g.Free, g.Slices)
		}
		seen[g.UUID] = true
	}
	return nil
}

// FreeByGPU is each GPU's free slices, by UUID.
func (ns NodeSlices) FreeByGPU() map[string]int {
	free := make(map[string]int, len(ns.GPUs))
	for _, g := range ns.GPUs {
		free[g.UUID] = g.Free
	}
	return free
}

// FreeMax is the most free slices any one GPU has (0 with none).
func (ns NodeSlices) FreeMax() int {
	most := 0
	for _, g := range ns.GPUs {
		most = max(most, g.Free)
	}
	return most
}

// Marshal writes the annotation's value.
func (ns NodeSlices) Marshal() (string, error) {
	if err := ns.Validate(); err != nil {
		return "", err
	}
	b, err := json.Marshal(ns)
	if err != nil {
		return "", err
	}
	if len(b) > MaxNodeSlicesBytes {
		return "", fmt.Errorf("%w: %d bytes, more than %d", ErrBadNodeSlices, len(b), MaxNodeSlicesBytes)
	}
	return string(b), nil
}
