package vgpu

import (
	"errors"
	"fmt"
	"sort"
)

// MaxSlicesPerGPU bounds how finely one GPU may be cut. The kubelet holds
// every device ID in memory and in its checkpoint, so thousands per GPU only
// cost without helping anyone.
const MaxSlicesPerGPU = 256

// GPU is what slicing needs to know about one physical GPU.
type GPU struct {
	// UUID is NVML's UUID for the GPU.
	UUID string
	// Index is NVML's index for the GPU on this node.
	Index int
	// Model is NVML's product name, e.g. "NVIDIA A100-SXM4-40GB".
	Model string
	// MemoryBytes is the GPU's total framebuffer memory.
	MemoryBytes uint64
	// MIGProfile is set when the "GPU" is a MIG instance cut into slices:
	// UUID is then its MIG UUID, Index its GPU's (which the GPU's other
	// instances share), MemoryBytes its own, and its rule is its
	// profile's (Config.MIGProfiles).
	MIGProfile string
}

// Rule says how to cut one GPU. Exactly one of the fields is set.
type Rule struct {
	// SlicesPerGPU cuts the GPU into this many equal slices.
	SlicesPerGPU int
	// SliceMemoryBytes cuts the GPU into as many slices of this much memory
	// as fit; memory left over is not offered.
	SliceMemoryBytes uint64
}

// Validate reports whether the rule sets exactly one sensible field.
func (r Rule) Validate() error {
	switch {
	case r.SlicesPerGPU != 0 && r.SliceMemoryBytes != 0:
		return errors.New("set slicesPerGPU or sliceMemory, not both")
	case r.SlicesPerGPU == 0 && r.SliceMemoryBytes == 0:
		return errors.New("set slicesPerGPU or sliceMemory")
	case r.SlicesPerGPU < 0 || r.SlicesPerGPU > MaxSlicesPerGPU:
		return fmt.Errorf("slicesPerGPU %d is outside 1..%d", r.SlicesPerGPU, MaxSlicesPerGPU)
	}
	return nil
}

// Config is the slicing configuration for a node: a default rule and
// optional per-model overrides, so nodes with mixed GPU models work, and
// the MIG profiles whose instances are cut into slices.
type Config struct {
	// Default applies to every GPU whose model has no entry in Models.
	Default Rule
	// Models maps an NVML product name to the rule for GPUs of that model.
	Models map[string]Rule
	// MIGProfiles maps a MIG profile name ("3g.40gb") to the rule its
	// instances are cut by; an instance of a profile not here is not cut
	// (it is offered whole).
	MIGProfiles map[string]Rule
}

// Validate checks the default rule and every per-model rule.
func (c Config) Validate() error {
	if err := c.Default.Validate(); err != nil {
		return fmt.Errorf("default slicing: %w", err)
	}
	for model, r := range c.Models {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("slicing for model %q: %w", model, err)
		}
	}
	for profile, r := range c.MIGProfiles {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("slicing for MIG profile %q: %w", profile, err)
		}
	}
	return nil
}

// SlicesMIG reports whether instances of a MIG profile are cut into
// slices.
func (c Config) SlicesMIG(profile string) bool {
	_, ok := c.MIGProfiles[profile]
	return ok
}

func (c Config) rule(g GPU) (Rule, error) {
	if g.MIGProfile != "" {
		r, ok := c.MIGProfiles[g.MIGProfile]
		if !ok {
			return Rule{}, fmt.Errorf("MIG profile %s has no slicing rule", g.MIGProfile)
		}
		return r, nil
	}
	if r, ok := c.Models[g.Model]; ok {
		return r, nil
	}
	return c.Default, nil
}

// GPUSlices is one GPU as the layout cut it.
type GPUSlices struct {
	GPU
	// Slices is how many slices the GPU was cut into.
	Slices int
	// SliceMemoryBytes is the memory each slice carries.
	SliceMemoryBytes uint64
}

// Layout is the result of cutting a node's GPUs. It is immutable once built
// and safe for concurrent use.
type Layout struct {
	gpus   []GPUSlices // sorted by Index
	byUUID map[string]int
	// byID maps every slice ID string to its parsed form, so the hot paths
	// (placement, limits) resolve IDs without parsing them.
	byID map[string]SliceID
}

// DefaultSlicesPerGPU is how many slices a GPU is cut into when neither a
// slice count nor a slice size is asked for, by both node binaries.
const DefaultSlicesPerGPU = 8

// NewLayout cuts gpus according to cfg. GPUs are ordered by index (a
// GPU's MIG instances by UUID after it); UUIDs must be unique, and so must
// the indexes of GPUs used whole.
func NewLayout(gpus []GPU, cfg Config) (*Layout, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Layout{byUUID: make(map[string]int, len(gpus))}
	indexes := make(map[int]bool, len(gpus))
	for _, g := range gpus {
		if err := validUUID(g.UUID); err != nil {
			return nil, fmt.Errorf("gpu %d: %w", g.Index, err)
		}
		if _, dup := l.byUUID[g.UUID]; dup {
			return nil, fmt.Errorf("gpu %d: duplicate UUID %s", g.Index, g.UUID)
		}
		if indexes[g.Index] && g.MIGProfile == "" {
			return nil, fmt.Errorf("gpu %s: duplicate index %d", g.UUID, g.Index)
		}
		r, err := cfg.rule(g)
		if err != nil {
			return nil, fmt.Errorf("gpu %d (%s): %w", g.Index, g.UUID, err)
		}
		n, mem, err := cut(g, r)
		if err != nil {
			return nil, fmt.Errorf("gpu %d (%s, %s): %w", g.Index, g.UUID, g.Model, err)
		}
		l.byUUID[g.UUID] = -1
		if g.MIGProfile == "" {
			indexes[g.Index] = true
		}
		l.gpus = append(l.gpus, GPUSlices{GPU: g, Slices: n, SliceMemoryBytes: mem})
	}
	sort.Slice(l.gpus, func(i, j int) bool {
		if l.gpus[i].Index != l.gpus[j].Index {
			return l.gpus[i].Index < l.gpus[j].Index
		}
		return l.gpus[i].UUID < l.gpus[j].UUID
	})
	l.byID = make(map[string]SliceID)
	for i, g := range l.gpus {
		l.byUUID[g.UUID] = i
		for j := range g.Slices {
			s := SliceID{UUID: g.UUID, Index: j}
			l.byID[s.String()] = s
		}
	}
	return l, nil
}

func cut(g GPU, r Rule) (slices int, sliceMem uint64, err error) {
	if g.MemoryBytes == 0 {
		return 0, 0, errors.New("reports no memory")
	}
	if r.SlicesPerGPU > 0 {
		return r.SlicesPerGPU, g.MemoryBytes / uint64(r.SlicesPerGPU), nil
	}
	n := g.MemoryBytes / r.SliceMemoryBytes
	if n == 0 {
		return 0, 0, fmt.Errorf("sliceMemory %d bytes is larger than the GPU's %d bytes", r.SliceMemoryBytes, g.MemoryBytes)
	}
	if n > MaxSlicesPerGPU {
		return 0, 0, fmt.Errorf("sliceMemory %d bytes gives %d slices, more than %d", r.SliceMemoryBytes, n, MaxSlicesPerGPU)
	}
	return int(n), r.SliceMemoryBytes, nil
}

// GPUs returns the GPUs of the layout ordered by index.
func (l *Layout) GPUs() []GPUSlices {
	return append([]GPUSlices(nil), l.gpus...)
}

// UUIDs returns the UUIDs of the layout's GPUs ordered by index.
func (l *Layout) UUIDs() []string {
	out := make([]string, len(l.gpus))
	for i, g := range l.gpus {
		out[i] = g.UUID
	}
	return out
}

// GPU returns the layout of the GPU with the given UUID.
func (l *Layout) GPU(uuid string) (GPUSlices, bool) {
	i, ok := l.byUUID[uuid]
	if !ok {
		return GPUSlices{}, false
	}
	return l.gpus[i], true
}

// TotalSlices returns the number of slices on the node.
func (l *Layout) TotalSlices() int {
	n := 0
	for _, g := range l.gpus {
		n += g.Slices
	}
	return n
}

// SliceIDs returns every slice ID on the node, ordered by GPU index then
// slice index.
func (l *Layout) SliceIDs() []SliceID {
	ids := make([]SliceID, 0, l.TotalSlices())
	for _, g := range l.gpus {
		for i := range g.Slices {
			ids = append(ids, SliceID{UUID: g.UUID, Index: i})
		}
	}
	return ids
}

// ErrUnknownSlice reports a well-formed slice ID that this layout does not have.
var ErrUnknownSlice = errors.New("unknown slice")

// Resolve parses id and checks that it names a slice of this layout.
func (l *Layout) Resolve(id string) (SliceID, error) {
	if s, ok := l.byID[id]; ok {
		return s, nil
	}
	// Not one of ours: parse it only to say precisely what is wrong.
	s, err := ParseSliceID(id)
	if err != nil {
		return SliceID{}, err
	}
	g, ok := l.GPU(s.UUID)
	if !ok {
		return SliceID{}, fmt.Errorf("%w %s: no GPU %s on this node", ErrUnknownSlice, id, s.UUID)
	}
	if s.Index >= g.Slices {
		return SliceID{}, fmt.Errorf("%w %s: GPU %s has %d slices", ErrUnknownSlice, id, s.UUID, g.Slices)
	}
	return s, nil
}

// With is the layout of l's GPUs and other's, each cut as it was: the one
// layout slice IDs of either are read in (a node's whole GPUs and its
// sliced MIG instances). A UUID in both is an error.
func (l *Layout) With(other *Layout) (*Layout, error) {
	out := &Layout{byUUID: map[string]int{}, byID: map[string]SliceID{}}
	out.gpus = append(append([]GPUSlices(nil), l.gpus...), other.gpus...)
	sort.SliceStable(out.gpus, func(i, j int) bool {
		if out.gpus[i].Index != out.gpus[j].Index {
			return out.gpus[i].Index < out.gpus[j].Index
		}
		return out.gpus[i].MIGProfile == "" && out.gpus[j].MIGProfile != "" ||
			(out.gpus[i].MIGProfile != "") == (out.gpus[j].MIGProfile != "") && out.gpus[i].UUID < out.gpus[j].UUID
	})
	for i, g := range out.gpus {
		if _, dup := out.byUUID[g.UUID]; dup {
			return nil, fmt.Errorf("gpu %s is in both layouts", g.UUID)
		}
		out.byUUID[g.UUID] = i
		for j := range g.Slices {
			s := SliceID{UUID: g.UUID, Index: j}
			out.byID[s.String()] = s
		}
	}
	return out, nil
}
