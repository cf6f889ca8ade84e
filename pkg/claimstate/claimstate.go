// Package claimstate tells gpu-dra-driver how each DRA claim's share is
// held on the node, so that the claim's status says it (the driver's
// Enforced condition). gpu-agent --dra knows it per container (the
// enforcer's reasons, gpuslice_enforcement_enforced); Build folds that
// into one state per claim, and a Writer keeps the node-local file the
// driver reads (contract.ClaimEnforcementPath) current. All API writes
// stay with the driver, so the agent needs no right on claims.
package claimstate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// Enforcement is what the enforcer publishes; *enforce.Enforcer is one.
type Enforcement interface {
	Node() enforce.NodeState
	Stats() map[string]enforce.Stats
	Tiers() (compute, memory string)
}

// Build is how each claim held by a container in the snapshot is
// enforced: per resource, the worst reason over the claim's containers
// (one not held outweighs any held), and the tier where it is held.
func Build(snap *node.Snapshot, e Enforcement) contract.ClaimEnforcement {
	out := contract.ClaimEnforcement{Version: contract.ClaimEnforcementVersion, Claims: map[string]contract.ClaimEnforced{}}
	if snap == nil {
		return out
	}
	n, stats := e.Node(), e.Stats()
	computeTier, memoryTier := e.Tiers()
	for _, c := range snap.Containers {
		if len(c.Claims) == 0 {
			continue
		}
		st, seen := stats[c.Cgroup.Key()]
		compute, memory := enforce.ContainerReasons(n, st, seen, c.Unknown != "")
		for _, name := range c.Claims {
			cur, ok := out.Claims[name]
			if !ok {
				cur = contract.ClaimEnforced{Compute: compute, Memory: memory}
			}
			cur.Compute, cur.Memory = worse(cur.Compute, compute), worse(cur.Memory, memory)
			cur.Containers++
			out.Claims[name] = cur
		}
	}
	for name, c := range out.Claims {
		if enforce.Held(c.Compute) {
			c.ComputeTier = computeTier
		}
		if enforce.Held(c.Memory) {
			c.MemoryTier = memoryTier
		}
		c.State = state(c.Compute, c.Memory)
		out.Claims[name] = c
	}
	return out
}

// state sums a claim's two reasons up.
func state(compute, memory string) string {
	switch {
	case enforce.Held(compute) && enforce.Held(memory):
		if compute == enforce.ReasonPodLevel || memory == enforce.ReasonPodLevel {
			return contract.ClaimHeldAtPodLevel
		}
		return contract.ClaimHeld
	case enforce.CannotHold(compute) || enforce.CannotHold(memory):
		return contract.ClaimNotHeld
	}
	return contract.ClaimEnforcementOff
}

// worse is the reason that says less is held: not held over pod-level
// over enforced; of two not held, the first in sort order, so the result
// does not depend on the containers' order.
func worse(a, b string) string {
	rank := func(r string) int {
		switch r {
		case enforce.ReasonEnforced:
			return 0
		case enforce.ReasonPodLevel:
			return 1
		}
		return 2
	}
	if ra, rb := rank(a), rank(b); ra != rb {
		if ra > rb {
			return a
		}
		return b
	}
	s := []string{a, b}
	sort.Strings(s)
	return s[0]
}

// Writer keeps the enforcement file at path current, rewriting it (a
// temporary file renamed into place) only when it changes.
type Writer struct {
	path string
	last []byte
}

// NewWriter returns a writer of the file at path.
func NewWriter(path string) *Writer { return &Writer{path: path} }

// Write writes state unless the file already holds it.
func (w *Writer) Write(state contract.ClaimEnforcement) error {
	data, err := json.Marshal(state)
	if err != nil {
		return err
	}
	if bytes.Equal(data, w.last) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(w.path), ".claim-enforcement-*")
	if err != nil {
		return fmt.Errorf("claim enforcement file: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("claim enforcement file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("claim enforcement file: %w", err)
	}
	if err := os.Rename(tmp.Name(), w.path); err != nil {
		return fmt.Errorf("claim enforcement file: %w", err)
	}
	w.last = data
	return nil
}

// Run writes the claims' enforcement every interval until ctx ends, from
// the latest snapshot.
func Run(ctx context.Context, interval time.Duration, snapshot func() *node.Snapshot, e Enforcement, w *Writer, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := w.Write(Build(snapshot(), e)); err != nil {
			log.Warn("claims' enforcement not written for the DRA driver: their status goes stale", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
