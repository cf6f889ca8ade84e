package claimstate

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// published is what an enforcer published: a fixed node state, stats by
// cgroup key and tiers.
type published struct {
	node  enforce.NodeState
	stats map[string]enforce.Stats
}

func (p published) Node() enforce.NodeState         { return p.node }
func (p published) Stats() map[string]enforce.Stats { return p.stats }
func (p published) Tiers() (compute, memory string) { return "throttle", "driver-limits+watchdog" }

func ctr(id string, claims ...string) node.Container {
	return node.Container{Namespace: "ml", Pod: "p-" + id, Container: "main", Cgroup: node.Cgroup{ContainerID: id}, Claims: claims}
}

// TestBuild: a claim's state is the worst over its containers; a tier
// that cannot hold one container's share makes the claim not held, named
// by why; a container at its pod's level holds it at pod level; tiers
// are named only where held; containers without claims are left out.
func TestBuild(t *testing.T) {
	t.Parallel()
	held := enforce.NodeState{Compute: enforce.ReasonEnforced, Memory: enforce.ReasonEnforced}
	e := published{node: held, stats: map[string]enforce.Stats{
		"a1": {Compute: enforce.ReasonEnforced, Memory: enforce.ReasonEnforced},
		"a2": {Compute: enforce.ReasonNoFreezer, Memory: enforce.ReasonEnforced},
		"b1": {Compute: enforce.ReasonEnforced, Memory: enforce.ReasonEnforced},
		"c1": {Compute: enforce.ReasonDisabled, Memory: enforce.ReasonReportOnly},
	}}
	unknown := ctr("u1", "ml/d")
	unknown.Unknown = "its processes could not be placed"
	snap := &node.Snapshot{Containers: []node.Container{
		ctr("a1", "ml/a"), ctr("a2", "ml/a"), // a: shared by two, one without a freezer
		ctr("b1", "ml/b", "ml/shared"), ctr("b2", "ml/shared"), // b2 not seen yet: as the node can
		ctr("c1", "ml/c"),
		unknown,
		ctr("vgpu"), // slices only
	}}
	got := Build(snap, e)
	want := map[string]contract.ClaimEnforced{
		"ml/a":      {State: contract.ClaimNotHeld, Compute: enforce.ReasonNoFreezer, Memory: enforce.ReasonEnforced, MemoryTier: "driver-limits+watchdog", Containers: 2},
		"ml/b":      {State: contract.ClaimHeld, Compute: "enforced", Memory: "enforced", ComputeTier: "throttle", MemoryTier: "driver-limits+watchdog", Containers: 1},
		"ml/shared": {State: contract.ClaimHeld, Compute: "enforced", Memory: "enforced", ComputeTier: "throttle", MemoryTier: "driver-limits+watchdog", Containers: 2},
		"ml/c":      {State: contract.ClaimEnforcementOff, Compute: enforce.ReasonDisabled, Memory: enforce.ReasonReportOnly, Containers: 1},
		"ml/d":      {State: contract.ClaimHeldAtPodLevel, Compute: enforce.ReasonPodLevel, Memory: enforce.ReasonPodLevel, ComputeTier: "throttle", MemoryTier: "driver-limits+watchdog", Containers: 1},
	}
	if diff := cmp.Diff(want, got.Claims); diff != "" {
		t.Errorf("Build (-want +got)\n%s", diff)
	}
	if got.Version != contract.ClaimEnforcementVersion {
		t.Errorf("version %d", got.Version)
	}
	// The containers' order does not change the answer.
	snap.Containers[0], snap.Containers[1] = snap.Containers[1], snap.Containers[0]
	if diff := cmp.Diff(want, Build(snap, e).Claims); diff != "" {
		t.Errorf("Build with the containers swapped (-want +got)\n%s", diff)
	}
}

// TestWriterWritesOnChange: the file is replaced (a new inode) only when
// what it says changes, and reads back as written.
func TestWriterWritesOnChange(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), contract.ClaimEnforcementFile)
	w := NewWriter(path)
	state := contract.ClaimEnforcement{Version: contract.ClaimEnforcementVersion, Claims: map[string]contract.ClaimEnforced{"ml/a": {State: contract.ClaimHeld}}}
	if err := w.Write(state); err != nil {
		t.Fatal(err)
	}
	first, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(state); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Stat(path); !os.SameFile(first, again) {
		t.Error("an unchanged state replaced the file")
	}
	state.Claims["ml/a"] = contract.ClaimEnforced{State: contract.ClaimNotHeld}
	if err := w.Write(state); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	back, err := contract.ParseClaimEnforcement(data)
	if err != nil || back.Claims["ml/a"].State != contract.ClaimNotHeld {
		t.Errorf("read back %+v, %v", back, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("left %d files, want the one", len(entries))
	}
}
