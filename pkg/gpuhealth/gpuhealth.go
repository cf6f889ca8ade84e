// Package gpuhealth is the one owner of the node's GPU health. A Monitor
// watches the GPU backend (starting a broken watch again), keeps each
// GPU's latest health and its critical XIDs, and hands every report to the
// front ends that subscribed: the device plugin's offered slices in
// gpu-agent, the DRA driver's device taints and Prepare in gpu-dra-driver.
// The sampler reads the same record for gpuslice_device_healthy and
// gpuslice_device_xid_errors_total, so what the metrics say and what the
// front ends offer come from one place.
package gpuhealth

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/gpuslice/gpuslice/pkg/gpudev"
)

// Retry is how long Run waits before watching again after a watch ended
// while its context had not.
const Retry = 10 * time.Second

// Watcher reports GPU health; every GPU backend (nvml.Backend) is one.
type Watcher interface {
	// WatchHealth reports every GPU's state once, then each change and
	// every critical XID, until ctx ends or it fails.
	WatchHealth(ctx context.Context, report func(gpudev.Health)) error
}

// Monitor is the node's GPU health: each GPU's latest report and the
// critical XIDs reported for it since the process started. It is safe
// for concurrent use.
type Monitor struct {
	log   *slog.Logger
	mu    sync.Mutex
	gpus  map[string]gpudev.Health
	xids  map[string]map[uint64]uint64
	sinks []func(gpudev.Health)
}

// New returns a Monitor of the GPUs with the given UUIDs, each healthy
// until a report says otherwise. Reports of any other GPU are ignored,
// except those of MIG instances (Parent set), which come and go with
// their GPU's layout.
func New(uuids []string, log *slog.Logger) *Monitor {
	m := &Monitor{log: log, gpus: make(map[string]gpudev.Health, len(uuids)), xids: map[string]map[uint64]uint64{}}
	for _, u := range uuids {
		m.gpus[u] = gpudev.Health{UUID: u, Healthy: true}
	}
	return m
}

// Subscribe adds a sink that is handed every report of the monitor's GPUs,
// in order, after it is recorded; sinks run on Run's goroutine, one after
// the other. Subscribe before Run.
func (m *Monitor) Subscribe(sink func(gpudev.Health)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sinks = append(m.sinks, sink)
}

// Run watches w until ctx ends, watching again retry after each watch that
// ended early (NVML's event set broke, the driver reloaded): a node whose
// health watch broke once must not stop reporting XIDs for good.
func (m *Monitor) Run(ctx context.Context, w Watcher, retry time.Duration) {
	for {
		err := w.WatchHealth(ctx, m.Report)
		if ctx.Err() != nil {
			return
		}
		m.log.Error("gpu health watch failed; retrying", "err", err, "retry_in", retry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// Report records one report and hands it to the sinks. Run calls it for
// each report of the watch.
func (m *Monitor) Report(h gpudev.Health) {
	m.mu.Lock()
	prev, ok := m.gpus[h.UUID]
	if _, parentKnown := m.gpus[h.Parent]; !ok && h.Parent != "" && parentKnown {
		prev, ok = gpudev.Health{UUID: h.UUID, Parent: h.Parent, Healthy: true}, true
	}
	if !ok {
		m.mu.Unlock()
		return
	}
	m.gpus[h.UUID] = h
	if h.Reason == gpudev.ReasonXID && h.XID != 0 {
		if m.xids[h.UUID] == nil {
			m.xids[h.UUID] = map[uint64]uint64{}
		}
		m.xids[h.UUID][h.XID]++
	}
	sinks := m.sinks
	m.mu.Unlock()
	switch {
	case prev.Healthy && !h.Healthy:
		m.log.Warn("gpu unhealthy", "uuid", h.UUID, "reason", h.Reason, "xid", h.XID)
	case !prev.Healthy && h.Healthy:
		m.log.Info("gpu healthy", "uuid", h.UUID, "reason", h.Reason)
	}
	for _, sink := range sinks {
		sink(h)
	}
}

// Health returns a GPU's latest health; a GPU the monitor does not know
// is unhealthy, with no reason.
func (m *Monitor) Health(uuid string) gpudev.Health {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h, ok := m.gpus[uuid]; ok {
		return h
	}
	return gpudev.Health{UUID: uuid}
}

// Healthy reports whether a GPU or a MIG instance (parent set: its GPU)
// may be used: the GPU is healthy and, for an instance, no report made it
// unhealthy (an instance nothing was reported of is as healthy as its
// GPU).
func (m *Monitor) Healthy(uuid, parent string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if parent == "" {
		return m.gpus[uuid].Healthy
	}
	h, known := m.gpus[uuid]
	return m.gpus[parent].Healthy && (!known || h.Healthy)
}

// XIDs returns how many times each critical XID was reported for a GPU.
func (m *Monitor) XIDs(uuid string) map[uint64]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.xids[uuid])
}
