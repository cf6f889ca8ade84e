package deviceplugin

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// MIGSet serves a node's MIG instances, one MIGPlugin per resource, and
// follows changes to the GPUs' MIG layouts (Update): instances that are
// gone stop being offered, new ones are, and a profile that is new to the
// node gets its own plugin. A resource whose instances are all gone stays
// registered with none, so the kubelet's capacity for it drops to zero.
//
// The instances of the profiles the slicing cuts (vgpu.Config's
// MIGProfiles, mixed strategy only) are offered as slices instead, one
// Plugin per profile under contract.MIGSliceResource. Those are cut once:
// a change to their instances is a layout to cut anew (SlicedChange),
// which the agent does from its start.
type MIGSet struct {
	opts     Options
	strategy string
	slicing  vgpu.Config
	// sliceLayout cuts the sliced instances; sliced are those instances,
	// slices their plugins by resource. Fixed at NewMIGSet.
	sliceLayout *vgpu.Layout
	sliced      []nvml.InForce
	slices      map[string]*Plugin
	// current reads the GPUs as they are now: every Allocate checks its
	// instances against it.
	current func() ([]nvml.Device, error)

	mu      sync.Mutex
	plugins map[string]*MIGPlugin  // by resource
	health  map[string]nvml.Health // the latest report per GPU, for new plugins
	run     func(*MIGPlugin)       // serves a new plugin once Run started
	pending []*MIGPlugin           // made before Run
}

// NewMIGSet builds the plugins for the MIG instances of devs under
// strategy, the instances of the profiles slicing cuts as slices of the
// slice resource opts names. current reads the GPUs afresh (the
// backend's Devices).
func NewMIGSet(devs []nvml.Device, strategy string, slicing vgpu.Config, opts Options, current func() ([]nvml.Device, error)) (*MIGSet, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if len(slicing.MIGProfiles) > 0 && strategy != MIGMixed {
		return nil, fmt.Errorf("slicing MIG profiles (slicing.migProfiles) needs --mig-strategy=%s, not %s", MIGMixed, strategy)
	}
	s := &MIGSet{opts: opts, strategy: strategy, slicing: slicing, current: current, plugins: map[string]*MIGPlugin{},
		health: map[string]nvml.Health{}, slices: map[string]*Plugin{}}
	if err := s.cutSliced(devs); err != nil {
		return nil, err
	}
	if err := s.Update(devs); err != nil {
		return nil, err
	}
	return s, nil
}

// cutSliced builds the plugins of the sliced profiles' instances.
func (s *MIGSet) cutSliced(devs []nvml.Device) error {
	l, byProfile, err := MIGSliceLayout(devs, s.slicing)
	if err != nil {
		return err
	}
	s.sliceLayout = l
	for _, profile := range slices.Sorted(maps.Keys(byProfile)) {
		ins := byProfile[profile]
		gpus := make([]vgpu.GPU, len(ins))
		for i, in := range ins {
			g, _ := l.GPU(in.UUID)
			gpus[i] = g.GPU
		}
		one, err := vgpu.NewLayout(gpus, s.slicing)
		if err != nil {
			return err
		}
		res := contract.MIGSliceResource(s.opts.ResourceName, profile)
		p, err := NewMIGSlices(res, one, ins, s.opts, s.verifySliced)
		if err != nil {
			return err
		}
		s.slices[res] = p
		s.sliced = append(s.sliced, ins...)
	}
	return nil
}

// SliceResource is the resource a MIG profile's instances are offered
// under as slices, or "" for a profile offered whole.
func (s *MIGSet) SliceResource(profile string) string {
	if !s.slicing.SlicesMIG(profile) {
		return ""
	}
	return contract.MIGSliceResource(s.opts.ResourceName, profile)
}

// SliceLayout is the layout of the sliced MIG instances (empty when no
// profile is sliced): the holdings of their slices are read in it.
func (s *MIGSet) SliceLayout() *vgpu.Layout { return s.sliceLayout }

// SlicedChange says how the sliced profiles' instances in force differ
// from those cut at the start, or "" when they do not: such a change is
// a layout to cut anew.
func (s *MIGSet) SlicedChange(devs []nvml.Device) string {
	was := map[string]bool{}
	for _, in := range s.sliced {
		was[in.UUID] = true
	}
	now := map[string]bool{}
	for _, in := range nvml.InstancesInForce(devs) {
		if s.slicing.SlicesMIG(in.Profile) {
			now[in.UUID] = true
		}
	}
	for u := range was {
		if !now[u] {
			return fmt.Sprintf("MIG instance %s, cut into slices, is gone", u)
		}
	}
	for u := range now {
		if !was[u] {
			return fmt.Sprintf("MIG instance %s of a profile cut into slices was created", u)
		}
	}
	return ""
}

// verifySliced checks that sliced instances exist now.
func (s *MIGSet) verifySliced(uuids []string) error {
	if s.current == nil {
		return nil
	}
	devs, err := s.current()
	if err != nil && len(devs) == 0 {
		return fmt.Errorf("the GPUs' MIG layout cannot be read now: %w", err)
	}
	inForce := nvml.InstancesInForce(devs)
	for _, u := range uuids {
		if !slices.ContainsFunc(inForce, func(in nvml.InForce) bool { return in.UUID == u }) {
			return fmt.Errorf("MIG instance %s no longer exists (its GPU's layout changed)", u)
		}
	}
	return nil
}

// Resources lists the resources served, sorted.
func (s *MIGSet) Resources() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.allLocked()))
}

// served is what MIGSet asks of its plugins, of whole instances and of
// slices alike.
type served interface {
	Run(ctx context.Context) error
	Connected() bool
}

// allLocked is every plugin by resource, whole instances' and slices'.
func (s *MIGSet) allLocked() map[string]served {
	out := map[string]served{}
	for r, p := range s.plugins {
		out[r] = p
	}
	for r, p := range s.slices {
		out[r] = p
	}
	return out
}

// SlicePlugin is the plugin serving the slices of resource, or nil.
func (s *MIGSet) SlicePlugin(resource string) *Plugin {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.slices[resource]
}

// Plugin is the plugin serving resource, or nil.
func (s *MIGSet) Plugin(resource string) *MIGPlugin {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.plugins[resource]
}

// Update offers the MIG instances of devs: the plugins' instance lists
// are replaced, and a resource new to the node gets a plugin (served at
// once when Run is running).
func (s *MIGSet) Update(devs []nvml.Device) error {
	byResource, err := MIGResources(devs, s.strategy)
	if err != nil {
		return err
	}
	for r, ds := range byResource {
		if len(ds) > 0 && s.slicing.SlicesMIG(ds[0].Profile) {
			delete(byResource, r) // offered as slices
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for r, p := range s.plugins {
		if err := p.SetDevices(byResource[r]); err != nil {
			return err
		}
	}
	for _, r := range slices.Sorted(maps.Keys(byResource)) {
		if s.plugins[r] != nil {
			continue
		}
		p, err := NewMIG(r, byResource[r], s.opts)
		if err != nil {
			return err
		}
		p.verify = s.verify
		for _, h := range s.health {
			p.SetHealth(h)
		}
		s.plugins[r] = p
		if s.run != nil {
			s.run(p)
		} else {
			s.pending = append(s.pending, p)
		}
	}
	return nil
}

// verify checks that instances exist now, on the GPU the plugin offers
// them on, and re-offers what the GPUs hold now.
func (s *MIGSet) verify(ids []string) error {
	if s.current == nil {
		return nil
	}
	devs, err := s.current()
	if err != nil && len(devs) == 0 {
		return fmt.Errorf("the GPUs' MIG layout cannot be read now: %w", err)
	}
	now := map[string]bool{}
	for _, d := range devs {
		for _, in := range d.MIG.Instances {
			if d.MIG.Current {
				now[in.UUID] = true
			}
		}
	}
	for _, id := range ids {
		if !now[id] {
			// Offer what exists at once; the kubelet retries elsewhere.
			if err := s.Update(devs); err != nil {
				s.opts.Logger.Error("MIG layout changed and cannot be offered", "err", err)
			}
			return fmt.Errorf("MIG instance %s no longer exists (its GPU's layout changed)", id)
		}
	}
	return nil
}

// SetHealth passes a GPU's (or an instance's) health to every plugin. A
// sliced instance is healthy while its GPU is and no report made the
// instance itself unhealthy.
func (s *MIGSet) SetHealth(h nvml.Health) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.health[h.UUID] = h
	for _, p := range s.plugins {
		p.SetHealth(h)
	}
	for _, in := range s.sliced {
		if h.UUID != in.UUID && h.UUID != in.Parent.UUID {
			continue
		}
		gpu, ok := s.health[in.Parent.UUID]
		if !ok {
			gpu = nvml.Health{Healthy: true}
		}
		own, ok := s.health[in.UUID]
		if !ok {
			own = nvml.Health{Healthy: true}
		}
		eff := own
		if !gpu.Healthy {
			eff = gpu
		}
		eff.UUID, eff.Parent = in.UUID, ""
		s.slices[contract.MIGSliceResource(s.opts.ResourceName, in.Profile)].SetHealth(eff)
	}
}

// Connected fails while a plugin is not registered with a live kubelet.
func (s *MIGSet) Connected() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := s.allLocked()
	for _, r := range slices.Sorted(maps.Keys(all)) {
		if !all[r].Connected() {
			return fmt.Errorf("the device plugin for %s is not registered with a live kubelet", r)
		}
	}
	return nil
}

// Run serves every plugin, and each one Update adds, until ctx ends.
func (s *MIGSet) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	serve := func(resource string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				select {
				case errs <- fmt.Errorf("%s: %w", resource, err):
				default:
				}
			}
		}()
	}
	start := func(p *MIGPlugin) { serve(p.Resource(), p.Run) }
	s.mu.Lock()
	s.run = start
	for _, p := range s.pending {
		start(p)
	}
	for r, p := range s.slices {
		serve(r, p.Run)
	}
	s.pending = nil
	s.mu.Unlock()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	cancel()
	s.mu.Lock()
	s.run = nil
	s.mu.Unlock()
	wg.Wait()
	return err
}
