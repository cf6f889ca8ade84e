package node

import (
	"maps"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// TestJoinDRA attributes the processes of containers holding claims of
// gpuslice's DRA driver, and judges those that do not, from pod-resources,
// the runtime's records, the API server's pod UIDs and the driver's record
// only: the kubelet's DRA checkpoint is not read.
func TestJoinDRA(t *testing.T) {
	t.Parallel()
	const (
		uidC, uidD, uidE, uidF = "cccccccc-0000-4000-8000-000000000003", "dddddddd-0000-4000-8000-000000000004", "eeeeeeee-0000-4000-8000-000000000005", "ffffffff-0000-4000-8000-000000000006"
		uidG1, uidG2           = "11111111-0000-4000-8000-000000000007", "22222222-0000-4000-8000-000000000008"
	)
	share := func(gpu string, k int) contract.ClaimGrant {
		return contract.ClaimGrant{UUID: gpu, Slices: k, SlicesTotal: 8, ComputeRatio: float64(k) / 8, MemoryBytes: uint64(k) << 30, MemoryCapacity: 8 << 30}
	}
	admin := func(gpu string) contract.ClaimGrant {
		return contract.ClaimGrant{UUID: gpu, SlicesTotal: 8, MemoryCapacity: 8 << 30, Admin: true}
	}
	// ml/infer: "server" holds 3 of 8 of GPU-1, "mon" admin access to
	// GPU-2, "helper" nothing. ml/unref holds a claim on GPU-1 that no
	// container references. ml/fresh is not listed by pod-resources yet;
	// ml/stale's claim is not in the record. ml/g1 and ml/g2 share a claim.
	server := Assignment{Namespace: "ml", Pod: "infer", Container: "server", Claims: []string{"cl1"}}
	mon := Assignment{Namespace: "ml", Pod: "infer", Container: "mon", Claims: []string{"cl2"}}
	helper := Assignment{Namespace: "ml", Pod: "infer", Container: "helper"}
	evil := Assignment{Namespace: "ml", Pod: "unref", Container: "evil"}
	a := Assignment{Namespace: "ml", Pod: "g1", Container: "a", Claims: []string{"cl6"}}
	b := Assignment{Namespace: "ml", Pod: "g2", Container: "b", Claims: []string{"cl6"}}
	stale := Assignment{Namespace: "ml", Pod: "stale", Container: "worker", Claims: []string{"cl5"}}
	assignments := []Assignment{server, mon, helper, evil, a, b, stale}
	dra := DRA{
		Enabled: true,
		PodUIDs: map[PodName]string{
			{"ml", "infer"}: uidC, {"ml", "unref"}: uidD, {"ml", "stale"}: uidF,
			{"ml", "g1"}: uidG1, {"ml", "g2"}: uidG2,
		},
		Prepared: map[string]contract.PreparedClaim{
			"cl1": {Grants: []contract.ClaimGrant{share("GPU-1", 3)}},
			"cl2": {Grants: []contract.ClaimGrant{admin("GPU-2")}},
			"cl3": {Grants: []contract.ClaimGrant{share("GPU-1", 1)}},
			"cl4": {Grants: []contract.ClaimGrant{share("GPU-1", 2)}},
			"cl6": {Grants: []contract.ClaimGrant{share("GPU-1", 4)}},
		},
	}
	id := func(n int) string { return strings.Repeat(string(rune('0'+n)), 64) }
	runtime := names{
		id(1): {Name: "server", PodUID: uidC, PodNamespace: "ml", PodName: "infer"},
		id(2): {Name: "mon", PodUID: uidC, PodNamespace: "ml", PodName: "infer"},
		id(3): {Name: "helper", PodUID: uidC, PodNamespace: "ml", PodName: "infer"},
		id(4): {Name: "evil", PodUID: uidD, PodNamespace: "ml", PodName: "unref"},
		id(5): {Name: "worker", PodUID: uidE, PodNamespace: "ml", PodName: "fresh"},
		id(6): {Name: "worker", PodUID: uidF, PodNamespace: "ml", PodName: "stale"},
		id(7): {Name: "a", PodUID: uidG1, PodNamespace: "ml", PodName: "g1"},
	}
	in := func(uid string, n int) Cgroup { return Cgroup{PodUID: uid, ContainerID: id(n)} }
	tests := map[string]struct {
		proc    GPUProcess
		noNames bool
		mod     func(*DRA)
		stale   Stale
		want    *Attributed
		deny    string
		skip    string
	}{
		"container holding a share": {
			proc: GPUProcess{PID: 1, UUID: "GPU-1", Container: in(uidC, 1)},
			want: &Attributed{Assignment: server, PodUID: uidC, By: ByContainer},
		},
		"runtime silent: the pod's one claim holder on the GPU": {
			proc: GPUProcess{PID: 2, UUID: "GPU-1", Container: in(uidC, 1)}, noNames: true,
			want: &Attributed{Assignment: server, PodUID: uidC, By: ByPod},
		},
		"runtime silent, the API server's list from before the pod: never unauthorized": {
			proc:    GPUProcess{PID: 30, UUID: "GPU-1", Container: in(uidC, 3)},
			noNames: true,
			mod:     func(d *DRA) { delete(d.PodUIDs, PodName{"ml", "infer"}) },
			skip:    "cannot be told",
		},
		"runtime silent, the API server names the pod anew (deleted and made again): never charged to the new one": {
			proc:    GPUProcess{PID: 31, UUID: "GPU-1", Container: in(uidC, 1)},
			noNames: true,
			mod:     func(d *DRA) { d.PodUIDs[PodName{"ml", "infer"}] = uidE },
			skip:    "cannot be told",
		},
		"runtime silent: the pod's own cgroup, two containers of it on the GPU by claims": {
			proc:    GPUProcess{PID: 32, UUID: "GPU-1", Container: Cgroup{PodUID: uidC}},
			noNames: true,
			want:    &Attributed{Assignment: server, PodUID: uidC, By: ByPod},
		},
		"container without a claim reaches its pod's GPU": {
			proc: GPUProcess{PID: 3, UUID: "GPU-1", Container: in(uidC, 3)},
			deny: "container helper holds no slices",
		},
		"container with a share of another GPU only": {
			proc: GPUProcess{PID: 4, UUID: "GPU-2", Container: in(uidC, 1)},
			deny: "container server holds no slices",
		},
		"admin access: allowed, not limited": {
			proc: GPUProcess{PID: 5, UUID: "GPU-2", Container: in(uidC, 2)},
			skip: "admin access",
		},
		"a claim no container references buys no access": {
			proc: GPUProcess{PID: 6, UUID: "GPU-1", Container: in(uidD, 4)},
			deny: "container evil holds no slices",
		},
		"pod not listed by pod-resources yet": {
			proc: GPUProcess{PID: 7, UUID: "GPU-1", Container: in(uidE, 5)},
			skip: "not listed by pod-resources yet",
		},
		"claim missing from the driver's record": {
			proc: GPUProcess{PID: 8, UUID: "GPU-1", Container: in(uidF, 6)},
			skip: "not listed by pod-resources yet",
		},
		"no list from the API server: the runtime's record still names the pod": {
			proc: GPUProcess{PID: 9, UUID: "GPU-1", Container: in(uidC, 3)},
			mod:  func(d *DRA) { d.PodUIDs = nil },
			deny: "container helper holds no slices",
		},
		"no list from the API server, runtime silent: never unauthorized": {
			proc:    GPUProcess{PID: 13, UUID: "GPU-1", Container: in(uidC, 3)},
			noNames: true,
			mod:     func(d *DRA) { d.PodUIDs = nil },
			skip:    "cannot be told",
		},
		"driver's record unreadable: never unauthorized": {
			proc: GPUProcess{PID: 10, UUID: "GPU-1", Container: in(uidC, 3)},
			mod:  func(d *DRA) { d.Prepared = nil },
			skip: "not listed by pod-resources yet",
		},
		"a claim two pods share: each pod by its name": {
			proc: GPUProcess{PID: 11, UUID: "GPU-1", Container: in(uidG1, 7)},
			want: &Attributed{Assignment: a, PodUID: uidG1, By: ByContainer},
		},
		"DRA off: claims count for nothing": {
			proc: GPUProcess{PID: 12, UUID: "GPU-1", Container: in(uidC, 1)},
			mod:  func(d *DRA) { d.Enabled = false },
			deny: "container server holds no slices",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d := dra
			d.PodUIDs = maps.Clone(dra.PodUIDs)
			if tc.mod != nil {
				tc.mod(&d)
			}
			var n ContainerNames = runtime
			if tc.noNames {
				n = names{}
			}
			// The device-plugin checkpoint is readable and holds nothing:
			// only DRA can make a process authorized.
			r := Join([]GPUProcess{tc.proc}, assignments, []CheckpointEntry{}, "nvidia.com/vgpu", n, d, tc.stale)
			switch {
			case tc.want != nil:
				tc.want.GPUProcess = tc.proc
				if len(r.Attributed) != 1 || len(r.Unattributed)+len(r.Unauthorized) != 0 {
					t.Fatalf("Join() = %+v; want one attributed", r)
				}
				if diff := cmp.Diff(*tc.want, r.Attributed[0]); diff != "" {
					t.Errorf("(-want +got)\n%s", diff)
				}
			case tc.deny != "":
				if len(r.Unauthorized) != 1 || len(r.Attributed)+len(r.Unattributed) != 0 || !strings.Contains(r.Unauthorized[0].Reason, tc.deny) {
					t.Fatalf("Join() = %+v; want unauthorized because %q", r, tc.deny)
				}
			default:
				if len(r.Unattributed) != 1 || len(r.Attributed)+len(r.Unauthorized) != 0 || !strings.Contains(r.Unattributed[0].Reason, tc.skip) {
					t.Fatalf("Join() = %+v; want unattributed because %q", r, tc.skip)
				}
			}
		})
	}
}
