package node

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	uidA = "aaaaaaaa-0000-4000-8000-000000000001"
	uidB = "bbbbbbbb-0000-4000-8000-000000000002"
	uidN = "cccccccc-0000-4000-8000-00000000000e"
)

// names is a runtime record by container ID.
type names map[string]RuntimeContainer

func (n names) Lookup(id string) (RuntimeContainer, bool) { c, ok := n[id]; return c, ok }

func TestJoin(t *testing.T) {
	t.Parallel()
	const res = "nvidia.com/vgpu"
	// Pod A (ml/train) has two containers holding slices of GPU-1 and a
	// third holding none; pod B (lab/nb) one container on GPU-1 and GPU-2.
	train := Assignment{Namespace: "ml", Pod: "train", Container: "worker", DeviceIDs: []string{"GPU-1::0", "GPU-1::1"}}
	sidecar := Assignment{Namespace: "ml", Pod: "train", Container: "sidecar", DeviceIDs: []string{"GPU-1::2"}}
	nb := Assignment{Namespace: "lab", Pod: "nb", Container: "jupyter", DeviceIDs: []string{"GPU-1::3", "GPU-2::0"}}
	assignments := []Assignment{train, sidecar, nb}
	checkpoint := []CheckpointEntry{
		{PodUID: uidA, Container: "worker", Resource: res, DeviceIDs: train.DeviceIDs},
		{PodUID: uidA, Container: "sidecar", Resource: res, DeviceIDs: sidecar.DeviceIDs},
		{PodUID: uidB, Container: "jupyter", Resource: res, DeviceIDs: nb.DeviceIDs},
		{PodUID: uidB, Container: "jupyter", Resource: "other.com/x", DeviceIDs: []string{"GPU-1::0"}},
	}
	const (
		idWorker  = "1111111111111111111111111111111111111111111111111111111111111111"
		idSidecar = "2222222222222222222222222222222222222222222222222222222222222222"
		idLogger  = "3333333333333333333333333333333333333333333333333333333333333333"
		idPause   = "4444444444444444444444444444444444444444444444444444444444444444"
		idJupyter = "5555555555555555555555555555555555555555555555555555555555555555"
		idUnknown = "6666666666666666666666666666666666666666666666666666666666666666"
		idNew     = "7777777777777777777777777777777777777777777777777777777777777777"
	)
	runtime := names{
		idWorker:  {Name: "worker", PodUID: uidA, PodNamespace: "ml", PodName: "train"},
		idSidecar: {Name: "sidecar", PodUID: uidA, PodNamespace: "ml", PodName: "train"},
		idLogger:  {Name: "logger", PodUID: uidA, PodNamespace: "ml", PodName: "train"},
		idPause:   {Sandbox: true, PodUID: uidA, PodNamespace: "ml", PodName: "train"},
		idJupyter: {Name: "jupyter", PodUID: uidB, PodNamespace: "lab", PodName: "nb"},
		idNew:     {Name: "helper", PodUID: uidN, PodNamespace: "lab", PodName: "new"},
	}
	in := func(uid, id string) Cgroup { return Cgroup{PodUID: uid, ContainerID: id} }
	tests := map[string]struct {
		proc         GPUProcess
		noCheckpoint bool
		noNames      bool
		stale        Stale // which inputs are a last good copy
		want         *Attributed
		deny         string // reason of an Unauthorized verdict
		skip         string // reason of an Unattributed one
		heldAt       string // the pod an Unattributed one is held at
	}{
		"runtime names the container": {
			proc: GPUProcess{PID: 1, UUID: "GPU-1", Container: in(uidA, idSidecar)},
			want: &Attributed{Assignment: sidecar, PodUID: uidA, By: ByContainer},
		},
		"two gpu containers of one pod on one gpu: each its own": {
			proc: GPUProcess{PID: 2, UUID: "GPU-1", Container: in(uidA, idWorker)},
			want: &Attributed{Assignment: train, PodUID: uidA, By: ByContainer},
		},
		"only gpu container of its pod, runtime silent": {
			proc:    GPUProcess{PID: 3, UUID: "GPU-2", Container: in(uidB, idJupyter)},
			noNames: true,
			want:    &Attributed{Assignment: nb, PodUID: uidB, By: ByPod},
		},
		"pod-level process charged to the pod's one gpu container": {
			proc: GPUProcess{PID: 4, UUID: "GPU-2", Container: Cgroup{PodUID: uidB}},
			want: &Attributed{Assignment: nb, PodUID: uidB, By: ByPod},
		},
		"pod-level process in a pod of several gpu containers": {
			proc: GPUProcess{PID: 5, UUID: "GPU-1", Container: Cgroup{PodUID: uidA}},
			deny: "several of the pod's containers",
		},
		"container holding no slices reaches the gpu": {
			proc: GPUProcess{PID: 6, UUID: "GPU-1", Container: in(uidA, idLogger)},
			deny: "container logger holds no slices of this GPU",
		},
		"container with slices of another gpu only": {
			proc: GPUProcess{PID: 7, UUID: "GPU-2", Container: in(uidA, idWorker)},
			deny: "container worker holds no slices of this GPU",
		},
		"pod with no slices at all": {
			proc:    GPUProcess{PID: 8, UUID: "GPU-2", Container: in(uidA, idUnknown)},
			noNames: true,
			deny:    "its pod holds no slices of this GPU",
		},
		"sandbox container": {
			proc: GPUProcess{PID: 9, UUID: "GPU-1", Container: in(uidA, idPause)},
			deny: "sandbox",
		},
		"cgroup and runtime disagree on the pod": {
			proc: GPUProcess{PID: 10, UUID: "GPU-1", Container: in(uidB, idWorker)},
			deny: "names pod",
		},
		"runtime silent, several gpu containers: not guessed": {
			proc: GPUProcess{PID: 11, UUID: "GPU-1", Container: in(uidA, idUnknown)},
			skip: "no readable record of container", heldAt: uidA,
		},
		"stale checkpoint, a pod it lists: still judged": {
			proc:  GPUProcess{PID: 20, UUID: "GPU-1", Container: in(uidA, idLogger)},
			stale: Stale{Checkpoint: true},
			deny:  "container logger holds no slices of this GPU",
		},
		"stale checkpoint, a pod it does not list: never unauthorized": {
			proc:  GPUProcess{PID: 21, UUID: "GPU-1", Container: in(uidN, idNew)},
			stale: Stale{Checkpoint: true},
			skip:  "checkpoint is unreadable", heldAt: uidN,
		},
		"fresh checkpoint, a pod it does not list: unauthorized": {
			proc: GPUProcess{PID: 22, UUID: "GPU-1", Container: in(uidN, idNew)},
			deny: "container helper holds no slices of this GPU",
		},
		"checkpoint unreadable: never unauthorized": {
			proc:         GPUProcess{PID: 12, UUID: "GPU-2", Container: in(uidA, idUnknown)},
			noCheckpoint: true,
			skip:         "checkpoint is unreadable", heldAt: uidA,
		},
		"checkpoint unreadable, runtime names the container": {
			proc:         GPUProcess{PID: 13, UUID: "GPU-1", Container: in(uidA, idSidecar)},
			noCheckpoint: true,
			want:         &Attributed{Assignment: sidecar, PodUID: uidA, By: ByContainer},
		},
		"checkpoint unreadable, container without slices: not judged": {
			proc:         GPUProcess{PID: 14, UUID: "GPU-1", Container: in(uidA, idLogger)},
			noCheckpoint: true,
			skip:         "checkpoint is unreadable", heldAt: uidA,
		},
		"host process": {
			proc: GPUProcess{PID: 15, UUID: "GPU-1"},
			skip: "not in a pod or container",
		},
		"container outside any pod, runtime silent": {
			proc: GPUProcess{PID: 16, UUID: "GPU-1", Container: Cgroup{ContainerID: idUnknown}},
			skip: "no pod is known",
		},
		"container outside pod cgroups, named by the runtime": {
			proc: GPUProcess{PID: 17, UUID: "GPU-1", Container: Cgroup{ContainerID: idJupyter}},
			want: &Attributed{Assignment: nb, PodUID: uidB, By: ByContainer},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cp := checkpoint
			if tc.noCheckpoint {
				cp = nil
			}
			var n ContainerNames = runtime
			if tc.noNames {
				n = names{}
			}
			r := Join([]GPUProcess{tc.proc}, assignments, cp, res, n, DRA{}, tc.stale)
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
				if r.Unauthorized[0].Pod == "" && tc.proc.Container.PodUID == uidA {
					t.Errorf("unauthorized use in ml/train does not name its pod: %+v", r.Unauthorized[0])
				}
			default:
				if len(r.Unattributed) != 1 || len(r.Attributed)+len(r.Unauthorized) != 0 || !strings.Contains(r.Unattributed[0].Reason, tc.skip) {
					t.Fatalf("Join() = %+v; want unattributed because %q", r, tc.skip)
				}
				if got := r.Unattributed[0].PodUID; got != tc.heldAt {
					t.Errorf("held at pod %q, want %q", got, tc.heldAt)
				}
			}
		})
	}
}

func TestExpandCgroupsPath(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"/kubepods/burstable/pod" + uidA + "/" + strings.Repeat("a", 64):                  "/kubepods/burstable/pod" + uidA + "/" + strings.Repeat("a", 64),
		"kubepods-burstable-podaaaa_bbbb.slice:cri-containerd:" + strings.Repeat("a", 64): "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podaaaa_bbbb.slice/cri-containerd-" + strings.Repeat("a", 64) + ".scope",
		"kubelet-kubepods-podx.slice:crio:" + strings.Repeat("b", 64):                     "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-podx.slice/crio-" + strings.Repeat("b", 64) + ".scope",
		"system.slice:docker:abc": "/system.slice/docker-abc.scope",
		"-.slice::unit.scope":     "/unit.scope",
		"../../etc":               "/etc",
	} {
		if got := ExpandCgroupsPath(in); got != want {
			t.Errorf("ExpandCgroupsPath(%q) = %q, want %q", in, got, want)
		}
	}
}
