package draplugin_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/draplugin"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

// TestClaimStatusFollowsTheAgent: a prepared claim's Enforced condition
// is Unknown until gpu-agent says how its share is held, then follows what
// the agent's file says (held: True, with the tiers; a tier that cannot
// hold it: False, with why), on a real API server.
func TestClaimStatusFollowsTheAgent(t *testing.T) {
	srv := apiserver.Start(t)
	cs := driverClient(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := startNode(ctx, t, cs, nodeName, 2, false)
	defer n.plugin.Stop()
	kubelet := drapb.NewDRAPluginClient(n.dial(t))
	a := allocatedClaim(t, cs, "a", nodeName, "gpu-0", 2, 20)
	if resp, err := kubelet.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{ref(a)}}); err != nil || resp.Claims[string(a.UID)].GetError() != "" {
		t.Fatalf("prepare: %v, %+v", err, resp)
	}
	is := func(status metav1.ConditionStatus, reason, message string) func(metav1.Condition) bool {
		return func(c metav1.Condition) bool {
			return c.Status == status && c.Reason == reason && strings.Contains(c.Message, message)
		}
	}
	waitCondition(t, cs, "a", dra.ConditionEnforced, is(metav1.ConditionUnknown, "NotReported", ""))

	file := filepath.Join(n.dir, contract.ClaimEnforcementFile)
	say := func(e contract.ClaimEnforced) {
		t.Helper()
		data, _ := json.Marshal(contract.ClaimEnforcement{Version: contract.ClaimEnforcementVersion, Claims: map[string]contract.ClaimEnforced{"default/a": e}})
		if err := os.WriteFile(file+".tmp", data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".tmp", file); err != nil {
			t.Fatal(err)
		}
	}
	say(contract.ClaimEnforced{State: contract.ClaimHeld, Compute: "enforced", Memory: "enforced", ComputeTier: "throttle", MemoryTier: "watchdog", Containers: 1})
	_, held := waitCondition(t, cs, "a", dra.ConditionEnforced, is(metav1.ConditionTrue, "Enforced", "compute: enforced by throttle; memory: enforced by watchdog"))
	say(contract.ClaimEnforced{State: contract.ClaimNotHeld, Compute: "no-freezer", Memory: "enforced", MemoryTier: "watchdog", Containers: 1})
	_, notHeld := waitCondition(t, cs, "a", dra.ConditionEnforced, is(metav1.ConditionFalse, "NotEnforced", "compute: no-freezer"))
	if !notHeld.LastTransitionTime.After(held.LastTransitionTime.Time) && !notHeld.LastTransitionTime.Equal(&held.LastTransitionTime) {
		t.Errorf("transition time went back: %v after %v", notHeld.LastTransitionTime, held.LastTransitionTime)
	}
	// A report that cannot be read is never taken for the last one.
	if err := os.WriteFile(file+".tmp", []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(file+".tmp", file); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, cs, "a", dra.ConditionEnforced, is(metav1.ConditionUnknown, "ReportUnreadable", "bad claim enforcement file"))
	say(contract.ClaimEnforced{State: contract.ClaimNotHeld, Compute: "no-freezer", Memory: "enforced", MemoryTier: "watchdog", Containers: 1})
	waitCondition(t, cs, "a", dra.ConditionEnforced, is(metav1.ConditionFalse, "NotEnforced", "compute: no-freezer"))
	// The Prepared condition and the share stay beside it.
	share, _ := waitCondition(t, cs, "a", dra.ConditionPrepared, func(c metav1.Condition) bool { return c.Status == metav1.ConditionTrue })
	if share.Slices != 2 || share.Index != 0 {
		t.Errorf("share %+v, want 2 slices of GPU 0", share)
	}

	// A driver started again (from the same record) follows the claim it
	// did not prepare itself: the kubelet does not prepare it again.
	n.plugin.Stop()
	restarted := restart(ctx, t, cs, n)
	defer restarted.Stop()
	say(contract.ClaimEnforced{State: contract.ClaimHeldAtPodLevel, Compute: "pod-level", Memory: "pod-level", ComputeTier: "freezer", MemoryTier: "watchdog", Containers: 2})
	waitCondition(t, cs, "a", dra.ConditionEnforced, is(metav1.ConditionTrue, "EnforcedAtPodLevel", "containers: 2"))
}

// restart starts a plugin again on n's directories and record, as a
// driver restarted on the node.
func restart(ctx context.Context, t *testing.T, cs kubernetes.Interface, n aNode) *draplugin.Plugin {
	t.Helper()
	layout, devs := gpus(t, 2)
	devices, err := dra.Devices(layout, devs, nvml.SystemInfo{DriverVersion: "580.65.06"})
	if err != nil {
		t.Fatal(err)
	}
	minor := map[string]int{}
	for _, d := range devs {
		minor[d.UUID] = d.Minor
	}
	prep, err := dra.NewPreparer(dra.PreparerOptions{Pool: nodeName, Layout: layout, CDIDir: filepath.Join(n.dir, "cdi"), StatePath: filepath.Join(n.dir, "prepared.json"),
		Nodes: dra.Nodes{DevRoot: "/dev", Minor: minor}})
	if err != nil {
		t.Fatal(err)
	}
	if len(prep.Claims()) != 1 {
		t.Fatalf("the record holds %d claims, want the one prepared", len(prep.Claims()))
	}
	p, err := draplugin.Start(ctx, draplugin.Options{NodeName: nodeName, Client: cs, Preparer: prep, Devices: devices,
		RegistrarDir: filepath.Join(n.dir, "reg"), PluginDir: filepath.Join(n.dir, "plugin"), ClaimEnforcement: filepath.Join(n.dir, contract.ClaimEnforcementFile)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
