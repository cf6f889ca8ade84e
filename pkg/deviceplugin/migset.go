package deviceplugin

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// MIGSet serves a node's MIG instances, one MIGPlugin per resource, and
// follows changes to the GPUs' MIG layouts (Update): instances that are
// gone stop being offered, new ones are, and a profile that is new to the
// node gets its own plugin. A resource whose instances are all gone stays
// registered with none, so the kubelet's capacity for it drops to zero.
type MIGSet struct {
	opts     Options
	strategy string
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
// strategy. current reads the GPUs afresh (the backend's Devices).
func NewMIGSet(devs []nvml.Device, strategy string, opts Options, current func() ([]nvml.Device, error)) (*MIGSet, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &MIGSet{opts: opts, strategy: strategy, current: current, plugins: map[string]*MIGPlugin{}, health: map[string]nvml.Health{}}
	if err := s.Update(devs); err != nil {
		return nil, err
	}
	return s, nil
}

// Resources lists the resources served, sorted.
func (s *MIGSet) Resources() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.plugins))
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

// SetHealth passes a GPU's health to every plugin.
func (s *MIGSet) SetHealth(h nvml.Health) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.health[h.UUID] = h
	for _, p := range s.plugins {
		p.SetHealth(h)
	}
}

// Connected fails while a plugin is not registered with a live kubelet.
func (s *MIGSet) Connected() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range slices.Sorted(maps.Keys(s.plugins)) {
		if !s.plugins[r].Connected() {
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
	start := func(p *MIGPlugin) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Run(ctx); err != nil {
				select {
				case errs <- fmt.Errorf("%s: %w", p.Resource(), err):
				default:
				}
			}
		}()
	}
	s.mu.Lock()
	s.run = start
	for _, p := range s.pending {
		start(p)
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
