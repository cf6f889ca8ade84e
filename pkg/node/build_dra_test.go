package node_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// TestBuildDRAClaims: containers holding DRA claims get the claims'
// limits, from the driver's record, through the same accounting as
// device-plugin slices. A claim two containers hold is split between them
// (together they may use what it holds) and counted once on its GPU.
func TestBuildDRAClaims(t *testing.T) {
	t.Parallel()
	const uidD, uidE = "44444444-4444-4444-4444-444444444444", "55555555-5555-5555-5555-555555555555"
	share := func(gpu string, k int) contract.ClaimGrant {
		return contract.ClaimGrant{UUID: gpu, Slices: k, SlicesTotal: 4, ComputeRatio: float64(k) / 4, MemoryBytes: uint64(k) * 10e9, MemoryCapacity: 40e9}
	}
	in := input(t, 0, reading(proc(30, uidD, 4e9, 0.3), proc(40, uidE, 1e9, 0.1)))
	in.DRA = node.DRA{
		Enabled: true,
		PodUIDs: map[node.PodName]string{{Namespace: "ml", Name: "d"}: uidD, {Namespace: "ml", Name: "e"}: uidE},
		Prepared: map[string]contract.PreparedClaim{
			"solo": {Namespace: "ml", Name: "solo", Grants: []contract.ClaimGrant{share("GPU-b", 1), {UUID: "GPU-a", SlicesTotal: 4, MemoryCapacity: 40e9, Admin: true}}},
			"pair": {Namespace: "ml", Name: "pair", Grants: []contract.ClaimGrant{share("GPU-a", 1)}},
		},
	}
	// Pod d holds "solo": one slice of GPU-b and admin access to GPU-a.
	// Pod e's two containers share "pair", one slice of GPU-a; its third
	// holds a claim the record does not have.
	in.Assignments = append(append([]node.Assignment{}, in.Assignments...),
		node.Assignment{Namespace: "ml", Pod: "d", Container: "main", Claims: []string{"solo"}},
		node.Assignment{Namespace: "ml", Pod: "e", Container: "left", Claims: []string{"pair"}},
		node.Assignment{Namespace: "ml", Pod: "e", Container: "right", Claims: []string{"pair"}},
		node.Assignment{Namespace: "ml", Pod: "e", Container: "late", Claims: []string{"gone"}},
	)
	s, _, problems := node.Build(in, node.State{})
	got := map[string]node.Container{}
	for _, c := range s.Containers {
		got[c.Pod+"/"+c.Container+"@"+c.UUID] = c
	}
	if d := got["d/main@GPU-b"]; d.Slices != 1 || d.MemoryLimitBytes != 10e9 || !near(d.ComputeLimitRatio, 0.25) || d.Index != 1 {
		t.Errorf("d on GPU-b = %+v; want one slice's limits", d)
	}
	if d := got["d/main@GPU-b"]; len(d.Claims) != 1 || d.Claims[0] != "ml/solo" {
		t.Errorf("d's claims on GPU-b = %v, want ml/solo", d.Claims)
	}
	if e := got["e/left@GPU-a"]; len(e.Claims) != 1 || e.Claims[0] != "ml/pair" {
		t.Errorf("e/left's claims = %v, want ml/pair", e.Claims)
	}
	if _, ok := got["d/main@GPU-a"]; ok {
		t.Error("admin access made a limited entry on GPU-a")
	}
	for _, c := range []string{"left", "right"} {
		if e := got["e/"+c+"@GPU-a"]; e.Slices != 1 || e.MemoryLimitBytes != 5e9 || !near(e.ComputeLimitRatio, 0.125) {
			t.Errorf("e/%s = %+v; want half of one slice", c, e)
		}
	}
	if s.Devices[0].Allocated != 3+1 || s.Devices[1].Allocated != 1 {
		t.Errorf("allocated = %d, %d; want 4 (three device-plugin slices, the shared claim once) and 1", s.Devices[0].Allocated, s.Devices[1].Allocated)
	}
	var dra []node.Problem
	for _, p := range problems {
		if p.Source == node.SourceDRA {
			dra = append(dra, p)
		}
	}
	if len(dra) != 1 || !strings.Contains(dra[0].Err.Error(), "claim gone is not in the DRA driver's record") {
		t.Errorf("problems = %v; want the claim missing from the record", errors.Join(func() []error {
			var e []error
			for _, p := range problems {
				e = append(e, p.Err)
			}
			return e
		}()...))
	}
	// Pod d's process on GPU-a has admin access: allowed, not limited.
	// Pod e's cannot be judged while one of its claims is missing from
	// the record.
	reasons := map[int]string{}
	for _, u := range s.Unattributed {
		reasons[u.PID] = u.Reason
	}
	if len(s.Unauthorized) != 0 || !strings.Contains(reasons[30], "admin access") || !strings.Contains(reasons[40], "cannot be told") {
		t.Errorf("unauthorized %+v, unattributed %+v", s.Unauthorized, s.Unattributed)
	}
}

// TestHoldingOnAGPUNotReadIsBlind: a claim on a MIG instance names a GPU
// the agent does not read (it does not sample a GPU in MIG mode): the
// container is listed with what it holds, and its use is unknown, never
// zero.
func TestHoldingOnAGPUNotReadIsBlind(t *testing.T) {
	t.Parallel()
	const uid = "66666666-6666-6666-6666-666666666666"
	in := input(t, 0, reading())
	in.DRA = node.DRA{
		Enabled: true,
		PodUIDs: map[node.PodName]string{{Namespace: "ml", Name: "m"}: uid},
		Prepared: map[string]contract.PreparedClaim{"mig": {Namespace: "ml", Name: "mig", Grants: []contract.ClaimGrant{{
			UUID: "MIG-1", Parent: "GPU-a", MIGProfile: "1g.10gb", Slices: 1, SlicesTotal: 1, ComputeRatio: 1,
			MemoryBytes: 10e9, MemoryCapacity: 10e9, Whole: true,
		}}}},
	}
	in.Assignments = append(append([]node.Assignment{}, in.Assignments...), node.Assignment{Namespace: "ml", Pod: "m", Container: "main", Claims: []string{"mig"}})
	s, _, _ := node.Build(in, node.State{})
	var found bool
	for _, c := range s.Containers {
		if c.Pod == "m" {
			found = true
			if c.UUID != "MIG-1" || !c.Blind || c.MemoryLimitBytes != 10e9 {
				t.Errorf("the MIG claim's container: %+v, want it on MIG-1, blind, with the instance's memory", c)
			}
		}
	}
	if !found {
		t.Error("the MIG claim's container is not listed")
	}
}
