package enforce_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// TestAttackDRA: containers holding claims of gpuslice's DRA driver are
// held to their claim's share like device-plugin slices, and the default
// policy (kill) spares them; what a pod's claim does not reach is still
// unauthorized: a container of the pod that references no claim, and a
// pod whose claim no container references. Who holds what comes from
// pod-resources, the runtime's records, the pods' UIDs as the API server
// lists them and the driver's record only.
func TestAttackDRA(t *testing.T) {
	t.Parallel()
	kubelet := t.TempDir()
	n := startAttackNodeDRA(t, nil, kubelet)
	n.container(t, "ml/other", "gpu", 1) // the device manager's checkpoint exists
	gpu := n.node.Devices[0].UUID
	claims := []kubeletstub.DRAClaim{
		{UID: "11111111-aaaa-4000-8000-000000000001", Namespace: "ml", Name: "three", Pods: map[string][]string{"ml/dra": {"main"}}},
		{UID: "11111111-aaaa-4000-8000-000000000002", Namespace: "ml", Name: "unused", Pods: map[string][]string{"ml/unref": nil}},
	}
	record := contract.PreparedClaims{Version: contract.PreparedClaimsVersion, Claims: map[string]contract.PreparedClaim{}}
	capacity := n.node.Layout.GPUs()[0].MemoryBytes
	for i, c := range claims {
		k := 3 - 2*i // three slices, then one
		record.Claims[c.UID] = contract.PreparedClaim{Namespace: c.Namespace, Name: c.Name, Grants: []contract.ClaimGrant{{
			UUID: gpu, Slices: k, SlicesTotal: 10, ComputeRatio: float64(k) / 10,
			MemoryBytes: uint64(k) * capacity / 10, MemoryCapacity: capacity,
		}}}
	}
	data, err := json.Marshal(record)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(kubelet, "dra-prepared.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	n.node.PodResources.SetExtraPods(kubeletstub.DRAPods(claims, map[string][]string{
		"ml/dra": {"main", "sidecar"}, "ml/unref": {"main"},
	}))

	greedy := n.run(t, n.container(t, "ml/dra", "main", 0), 1, 1024)
	sidecar := n.run(t, n.container(t, "ml/dra", "sidecar", 0), 0.5, 1024)
	unref := n.run(t, n.container(t, "ml/unref", "main", 0), 0.5, 1024)
	if !sidecar.Exited(20*time.Second) || !unref.Exited(5*time.Second) {
		t.Fatalf("GPU use no claim reaches was not killed: %+v", n.smp.Snapshot().Unauthorized)
	}
	n.waitFor(t, "the claim holder accounted with its claim's limits", func(s *node.Snapshot) bool {
		for _, c := range s.Containers {
			if c.Pod == "dra" && c.Container == "main" {
				return c.Processes == 1 && c.Slices == 3 && c.ComputeLimitRatio == 0.3 && c.MemoryLimitBytes == 3*capacity/10
			}
		}
		return false
	})
	if greedy.Exited(0) {
		t.Fatal("the container holding a claim was killed")
	}
	// Strict holds it at its claim's 0.3 of the GPU; free it would run
	// all the time.
	time.Sleep(time.Second)
	if got := greedy.Share(t, 3*time.Second); got > 0.45 {
		t.Errorf("a greedy claim holder ran %.2f of the time, its claim is 0.3", got)
	}
	if greedy.Exited(0) {
		t.Error("the container holding a claim was killed")
	}
}
