package enforce_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// Broken host files fail closed: a record that turns unreadable keeps the
// holdings its last copy read whole says, for what already runs; nothing
// is dropped from enforcement and the snapshot says which file is stale.
// Judged by the workloads (the GPU time they asked for, whether they were
// killed). Before, a torn DRA record let a 0.3 claim run 1.00 and a hog on
// it live, and a garbage checkpoint left a process unenforced.

// TestAttackTornDRARecord: the DRA driver's record torn, then of a newer
// version: the claim holder is still held to its 0.3, a hog past its
// claim's memory is still killed, and its series stay.
func TestAttackTornDRARecord(t *testing.T) {
	t.Parallel()
	kubelet := t.TempDir()
	n := startAttackNodeDRA(t, nil, kubelet)
	n.container(t, "ml/other", "gpu", 1)
	gpu := n.node.Devices[0].UUID
	claim := kubeletstub.DRAClaim{UID: "22222222-aaaa-4000-8000-000000000001", Namespace: "ml", Name: "three", Pods: map[string][]string{"ml/dra": {"main"}}}
	capacity := n.node.Layout.GPUs()[0].MemoryBytes
	record := contract.PreparedClaims{Version: contract.PreparedClaimsVersion, Claims: map[string]contract.PreparedClaim{claim.UID: {
		Namespace: "ml", Name: "three", Grants: []contract.ClaimGrant{{UUID: gpu, Slices: 3, SlicesTotal: 10, ComputeRatio: 0.3, MemoryBytes: 3 * capacity / 10, MemoryCapacity: capacity}},
	}}}
	data, err := json.Marshal(record)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(kubelet, "dra-prepared.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	n.node.PodResources.SetExtraPods(kubeletstub.DRAPods([]kubeletstub.DRAClaim{claim}, map[string][]string{"ml/dra": {"main"}}))
	dir := n.container(t, "ml/dra", "main", 0)
	greedy := n.run(t, dir, 1, 1024)
	held := func(s *node.Snapshot) bool {
		for _, c := range s.Containers {
			if c.Pod == "dra" && c.Container == "main" {
				return c.Processes >= 1 && c.Slices == 3
			}
		}
		return false
	}
	n.waitFor(t, "the claim holder accounted with its claim", held)

	for _, broken := range []struct{ name, data string }{
		{"torn", string(data[:len(data)/2])},
		{"a newer version", strings.Replace(string(data), `"version":`+jsonNumber(contract.PreparedClaimsVersion), `"version":99`, 1)},
	} {
		t.Run(broken.name, func(t *testing.T) {
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			n.waitFor(t, "the record read whole", func(s *node.Snapshot) bool { return !s.Stale.Prepared && held(s) })
			if err := os.WriteFile(path, []byte(broken.data), 0o600); err != nil {
				t.Fatal(err)
			}
			n.waitFor(t, "the record read as stale", func(s *node.Snapshot) bool { return s.Stale.Prepared && held(s) })
			time.Sleep(time.Second)
			if got := greedy.Share(t, 3*time.Second); got > 0.45 {
				t.Errorf("with the record %s, a greedy claim holder ran %.2f of the time on a 0.3 claim", broken.name, got)
			}
			hog := n.run(t, dir, 0.01, 30<<10) // 30 GiB on a 24 GiB claim
			if !hog.Exited(20 * time.Second) {
				t.Errorf("with the record %s, a hog past its claim's memory lived", broken.name)
			}
		})
	}
}

func jsonNumber(v int) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestAttackGarbageCheckpoint: the device manager's checkpoint turned to
// garbage, with no runtime record of the container: its pod is still
// known from the last copy read whole, its greedy process held to its 0.2
// and a hog past its 16 GiB killed; a pod that checkpoint does not list is
// never judged unauthorized on it.
func TestAttackGarbageCheckpoint(t *testing.T) {
	t.Parallel()
	n := startAttackNode(t, nil)
	dir := n.container(t, "ml/train", "main", 2)
	if err := os.Remove(filepath.Join(n.runtime, cid("ml/train", "main"), "config.json")); err != nil {
		t.Fatal(err)
	}
	greedy := n.run(t, dir, 1, 1024)
	n.waitFor(t, "the greedy container attributed", func(s *node.Snapshot) bool { return processesOf(s, "train", "main") == 1 })

	checkpoint := filepath.Join(n.node.Dir, "kubelet_internal_checkpoint")
	if err := os.WriteFile(checkpoint, []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, "the checkpoint read as stale", func(s *node.Snapshot) bool { return s.Stale.Checkpoint })
	time.Sleep(time.Second)
	if got := greedy.Share(t, 3*time.Second); got > 0.45 {
		t.Errorf("with the checkpoint garbage, a greedy container ran %.2f of the time on a strict 0.2", got)
	}
	if processesOf(n.smp.Snapshot(), "train", "main") != 1 {
		t.Errorf("with the checkpoint garbage, the container's use was dropped: %+v", n.smp.Snapshot().Containers)
	}
	hog := n.run(t, dir, 0.01, 20<<10) // 20 GiB on 16 GiB
	if !hog.Exited(20 * time.Second) {
		t.Error("with the checkpoint garbage, a hog past the container's memory lived")
	}
	// A pod the last good copy does not list (with a fresh checkpoint, a
	// pod holding no slices, unauthorized): not judged on a stale copy.
	late := n.run(t, n.container(t, "ml/late", "logger", 0), 0.05, 256)
	n.waitFor(t, "the late pod's process counted", func(s *node.Snapshot) bool { return len(s.Unattributed) > 0 })
	if late.Exited(2 * time.Second) {
		t.Error("a container of a pod the stale checkpoint does not list was killed as unauthorized")
	}
}
