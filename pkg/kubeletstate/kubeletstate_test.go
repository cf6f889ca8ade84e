package kubeletstate_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// TestOnePodAgreesWithTheNode: what the driver tier reads for one new
// container (Pods.Holdings) is what the per-sample pass reads for the
// whole node (node.HoldingsOf over pod-resources, the checkpoint and the
// record), pod by pod: device-plugin slices cut under an older layout
// (10 per GPU, the agent now cuts 4) keep their grants, a claim two pods
// share is split three ways, and a container holding a GPU by a slice and
// a claim gets the sum.
func TestOnePodAgreesWithTheNode(t *testing.T) {
	t.Parallel()
	n := kubeletstub.StartNode(t, fakegpu.Config{Preset: "H100-80GB", Count: 2}, 10)
	layout, err := deviceplugin.NewLayout(n.Devices, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 4}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, a := range []struct {
		pod, ctr string
		k        int
	}{{"ml/train", "main", 3}, {"ml/both", "main", 1}, {"ml/both", "side", 2}} {
		if _, err := n.Connection.Allocate(ctx, a.pod, a.ctr, a.k); err != nil {
			t.Fatal(err)
		}
	}
	gpu := layout.GPUs()[1]
	share := func(k int) []contract.ClaimGrant {
		return []contract.ClaimGrant{{UUID: gpu.UUID, Index: gpu.Index, Slices: k, SlicesTotal: gpu.Slices,
			ComputeRatio: float64(k) / float64(gpu.Slices), MemoryBytes: uint64(k) * gpu.SliceMemoryBytes, MemoryCapacity: gpu.MemoryBytes}}
	}
	claims := []kubeletstub.DRAClaim{
		{UID: "33333333-aaaa-4000-8000-000000000001", Namespace: "ml", Name: "solo", Pods: map[string][]string{"ml/both": {"main"}}},
		{UID: "33333333-aaaa-4000-8000-000000000002", Namespace: "ml", Name: "shared", Pods: map[string][]string{"ml/left": {"a", "b"}, "ml/right": {"c"}}},
	}
	record := contract.PreparedClaims{Version: contract.PreparedClaimsVersion, Claims: map[string]contract.PreparedClaim{
		claims[0].UID: {Namespace: "ml", Name: "solo", Grants: share(1)},
		claims[1].UID: {Namespace: "ml", Name: "shared", Grants: share(3)},
	}}
	path := filepath.Join(t.TempDir(), "dra-prepared.json")
	data, err := json.Marshal(record)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	n.PodResources.SetExtraPods(kubeletstub.DRAPods(claims, map[string][]string{"ml/both": {"main"}, "ml/left": {"a", "b"}, "ml/right": {"c"}}))

	o := podresources.DefaultOptions()
	o.Socket, o.DRADriver = n.PodResourcesSocket, contract.DRADriverName
	client, err := podresources.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	opts := kubeletstate.Options{PluginDir: n.Dir, ResourceName: contract.ResourceName, Layout: layout, Assignments: client, DRA: true, PreparedClaims: path}

	// The whole node, as the sampler reads it.
	listed, err := client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkpoint, err := kubeletstate.ReadCheckpoint(n.Dir)
	if err != nil {
		t.Fatal(err)
	}
	whole := node.HoldingsOf(node.Sources{Assignments: listed, Checkpoint: checkpoint, ResourceName: contract.ResourceName, Layout: layout, DRA: true, Prepared: record.Claims})
	if len(whole.Problems) != 0 {
		t.Fatalf("problems: %+v", whole.Problems)
	}
	pods := kubeletstate.NewPods(opts)
	for _, p := range []string{"ml/train", "ml/both", "ml/left", "ml/right"} {
		ns, name := "ml", p[3:]
		got, err := pods.Holdings(ctx, events.Pod{Namespace: ns, Name: name, UID: kubeletstub.PodUID(p)})
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if diff := cmp.Diff(whole.Of(ns, name), got); diff != "" {
			t.Errorf("%s: one pod's read and the node's disagree (-node +pod):\n%s", p, diff)
		}
	}
	// The rules themselves, not only their agreement: the grants win over
	// the new layout (3 and 2 of 10, not of 4), and a shared claim is split
	// three ways.
	slice := n.Layout.GPUs()[0].SliceMemoryBytes
	want := map[string]uint64{"train/main": 3 * slice, "both/side": 2 * slice, "left/a": gpu.SliceMemoryBytes, "right/c": gpu.SliceMemoryBytes}
	got := map[string]uint64{}
	for _, h := range whole.Held {
		got[h.Pod+"/"+h.Container] += h.MemoryBytes
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s holds %d bytes, want %d", k, got[k], w)
		}
	}
	if whole.Allocated[gpu.UUID] < 4 {
		t.Errorf("allocated on GPU 1 = %d, want the claims' 4 (the shared one once) and any slices", whole.Allocated[gpu.UUID])
	}
}
