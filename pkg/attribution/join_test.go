package attribution

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/podresources"
)

const (
	uidA = "aaaaaaaa-0000-4000-8000-000000000001"
	uidB = "bbbbbbbb-0000-4000-8000-000000000002"
	uidN = "cccccccc-0000-4000-8000-00000000000e"
)

func TestParseCheckpoint(t *testing.T) {
	t.Parallel()
	perNUMA := `{"Data":{"PodDeviceEntries":[
	  {"PodUID":"` + uidA + `","ContainerName":"train","ResourceName":"nvidia.com/vgpu","DeviceIDs":{"-1":["GPU-1::1","GPU-1::0"]},"AllocResp":"CgA="},
	  {"PodUID":"` + uidB + `","ContainerName":"nb","ResourceName":"example.com/fpga","DeviceIDs":{"0":["f0"],"1":["f1"]},"AllocResp":""}],
	  "RegisteredDevices":{"nvidia.com/vgpu":["GPU-1::0","GPU-1::1"]}},"Checksum":1234}`
	got, err := ParseCheckpoint([]byte(perNUMA))
	if err != nil {
		t.Fatal(err)
	}
	want := []CheckpointEntry{
		{PodUID: uidA, Container: "train", Resource: "nvidia.com/vgpu", DeviceIDs: []string{"GPU-1::0", "GPU-1::1"}},
		{PodUID: uidB, Container: "nb", Resource: "example.com/fpga", DeviceIDs: []string{"f0", "f1"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("per-NUMA format (-want +got)\n%s", diff)
	}
	flat := `{"Data":{"PodDeviceEntries":[{"PodUID":"` + uidA + `","ContainerName":"c","ResourceName":"r","DeviceIDs":["b","a"]}]},"Checksum":1}`
	got, err = ParseCheckpoint([]byte(flat))
	if err != nil || len(got) != 1 || !cmp.Equal(got[0].DeviceIDs, []string{"a", "b"}) {
		t.Errorf("flat format = %+v, %v", got, err)
	}
	for name, bad := range map[string]string{
		"not json":      `{`,
		"ids wrong":     `{"Data":{"PodDeviceEntries":[{"PodUID":"u","ContainerName":"c","ResourceName":"r","DeviceIDs":7}]}}`,
		"missing uid":   `{"Data":{"PodDeviceEntries":[{"ContainerName":"c","ResourceName":"r","DeviceIDs":[]}]}}`,
		"data is array": `{"Data":[]}`,
	} {
		if _, err := ParseCheckpoint([]byte(bad)); err == nil {
			t.Errorf("%s: ParseCheckpoint accepted %s", name, bad)
		}
	}
	if got, err := ParseCheckpoint([]byte(`{"Data":{"PodDeviceEntries":null},"Checksum":0}`)); err != nil || len(got) != 0 {
		t.Errorf("empty checkpoint = %v, %v", got, err)
	}
}

// TestCheckpointGrants reads back what Allocate gave from the response the
// kubelet recorded, as protobuf bytes (base64 in the JSON), and ignores a
// response that is not gpuslice's or not protobuf.
func TestCheckpointGrants(t *testing.T) {
	t.Parallel()
	resp, err := proto.Marshal(&pluginapi.ContainerAllocateResponse{Envs: map[string]string{
		contract.EnvVisibleDevices: "GPU-1", contract.EnvSlices: "3",
		contract.EnvMemoryLimit: "15000000000", contract.EnvComputeLimit: "0.375",
	}})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := proto.Marshal(&pluginapi.ContainerAllocateResponse{Envs: map[string]string{"FPGA": "0"}})
	entry := func(uid string, resp []byte) string {
		return `{"PodUID":"` + uid + `","ContainerName":"c","ResourceName":"r","DeviceIDs":["a"],"AllocResp":"` + base64.StdEncoding.EncodeToString(resp) + `"}`
	}
	got, err := ParseCheckpoint([]byte(`{"Data":{"PodDeviceEntries":[` + entry(uidA, resp) + `,` + entry(uidB, other) + `,` + entry("u3", []byte{0xff, 0x01}) + `]}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []contract.Grant{{UUID: "GPU-1", Slices: 3, MemoryBytes: 15000000000, ComputeRatio: 0.375}}
	if !cmp.Equal(got[0].Grants, want) || got[1].Grants != nil || got[2].Grants != nil {
		t.Errorf("grants = %+v / %+v / %+v, want %+v / nil / nil", got[0].Grants, got[1].Grants, got[2].Grants, want)
	}
}

func FuzzParseCheckpoint(f *testing.F) {
	f.Add([]byte(`{"Data":{"PodDeviceEntries":[{"PodUID":"u","ContainerName":"c","ResourceName":"r","DeviceIDs":{"-1":["a"]}}]}}`))
	f.Add([]byte(`{"Data":{"PodDeviceEntries":[{"PodUID":"u","ContainerName":"c","ResourceName":"r","DeviceIDs":["a"]}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := ParseCheckpoint(data)
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.PodUID == "" || e.Container == "" || e.Resource == "" {
				t.Fatalf("accepted an incomplete entry %+v", e)
			}
		}
	})
}

// names is a runtime record by container ID.
type names map[string]RuntimeContainer

func (n names) Lookup(id string) (RuntimeContainer, bool) { c, ok := n[id]; return c, ok }

func TestJoin(t *testing.T) {
	t.Parallel()
	const res = "nvidia.com/vgpu"
	// Pod A (ml/train) has two containers holding slices of GPU-1 and a
	// third holding none; pod B (lab/nb) one container on GPU-1 and GPU-2.
	train := podresources.Assignment{Namespace: "ml", Pod: "train", Container: "worker", DeviceIDs: []string{"GPU-1::0", "GPU-1::1"}}
	sidecar := podresources.Assignment{Namespace: "ml", Pod: "train", Container: "sidecar", DeviceIDs: []string{"GPU-1::2"}}
	nb := podresources.Assignment{Namespace: "lab", Pod: "nb", Container: "jupyter", DeviceIDs: []string{"GPU-1::3", "GPU-2::0"}}
	assignments := []podresources.Assignment{train, sidecar, nb}
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
	in := func(uid, id string) Container { return Container{PodUID: uid, ContainerID: id} }
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
			proc: GPUProcess{PID: 1, GPU: "GPU-1", Container: in(uidA, idSidecar)},
			want: &Attributed{Assignment: sidecar, PodUID: uidA, By: ByContainer},
		},
		"two gpu containers of one pod on one gpu: each its own": {
			proc: GPUProcess{PID: 2, GPU: "GPU-1", Container: in(uidA, idWorker)},
			want: &Attributed{Assignment: train, PodUID: uidA, By: ByContainer},
		},
		"only gpu container of its pod, runtime silent": {
			proc:    GPUProcess{PID: 3, GPU: "GPU-2", Container: in(uidB, idJupyter)},
			noNames: true,
			want:    &Attributed{Assignment: nb, PodUID: uidB, By: ByPod},
		},
		"pod-level process charged to the pod's one gpu container": {
			proc: GPUProcess{PID: 4, GPU: "GPU-2", Container: Container{PodUID: uidB}},
			want: &Attributed{Assignment: nb, PodUID: uidB, By: ByPod},
		},
		"pod-level process in a pod of several gpu containers": {
			proc: GPUProcess{PID: 5, GPU: "GPU-1", Container: Container{PodUID: uidA}},
			deny: "several of the pod's containers",
		},
		"container holding no slices reaches the gpu": {
			proc: GPUProcess{PID: 6, GPU: "GPU-1", Container: in(uidA, idLogger)},
			deny: "container logger holds no slices of this GPU",
		},
		"container with slices of another gpu only": {
			proc: GPUProcess{PID: 7, GPU: "GPU-2", Container: in(uidA, idWorker)},
			deny: "container worker holds no slices of this GPU",
		},
		"pod with no slices at all": {
			proc:    GPUProcess{PID: 8, GPU: "GPU-2", Container: in(uidA, idUnknown)},
			noNames: true,
			deny:    "its pod holds no slices of this GPU",
		},
		"sandbox container": {
			proc: GPUProcess{PID: 9, GPU: "GPU-1", Container: in(uidA, idPause)},
			deny: "sandbox",
		},
		"cgroup and runtime disagree on the pod": {
			proc: GPUProcess{PID: 10, GPU: "GPU-1", Container: in(uidB, idWorker)},
			deny: "names pod",
		},
		"runtime silent, several gpu containers: not guessed": {
			proc: GPUProcess{PID: 11, GPU: "GPU-1", Container: in(uidA, idUnknown)},
			skip: "no readable record of container", heldAt: uidA,
		},
		"stale checkpoint, a pod it lists: still judged": {
			proc:  GPUProcess{PID: 20, GPU: "GPU-1", Container: in(uidA, idLogger)},
			stale: Stale{Checkpoint: true},
			deny:  "container logger holds no slices of this GPU",
		},
		"stale checkpoint, a pod it does not list: never unauthorized": {
			proc:  GPUProcess{PID: 21, GPU: "GPU-1", Container: in(uidN, idNew)},
			stale: Stale{Checkpoint: true},
			skip:  "checkpoint is unreadable", heldAt: uidN,
		},
		"fresh checkpoint, a pod it does not list: unauthorized": {
			proc: GPUProcess{PID: 22, GPU: "GPU-1", Container: in(uidN, idNew)},
			deny: "container helper holds no slices of this GPU",
		},
		"checkpoint unreadable: never unauthorized": {
			proc:         GPUProcess{PID: 12, GPU: "GPU-2", Container: in(uidA, idUnknown)},
			noCheckpoint: true,
			skip:         "checkpoint is unreadable", heldAt: uidA,
		},
		"checkpoint unreadable, runtime names the container": {
			proc:         GPUProcess{PID: 13, GPU: "GPU-1", Container: in(uidA, idSidecar)},
			noCheckpoint: true,
			want:         &Attributed{Assignment: sidecar, PodUID: uidA, By: ByContainer},
		},
		"checkpoint unreadable, container without slices: not judged": {
			proc:         GPUProcess{PID: 14, GPU: "GPU-1", Container: in(uidA, idLogger)},
			noCheckpoint: true,
			skip:         "checkpoint is unreadable", heldAt: uidA,
		},
		"host process": {
			proc: GPUProcess{PID: 15, GPU: "GPU-1"},
			skip: "not in a pod or container",
		},
		"container outside any pod, runtime silent": {
			proc: GPUProcess{PID: 16, GPU: "GPU-1", Container: Container{ContainerID: idUnknown}},
			skip: "no pod is known",
		},
		"container outside pod cgroups, named by the runtime": {
			proc: GPUProcess{PID: 17, GPU: "GPU-1", Container: Container{ContainerID: idJupyter}},
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

func TestParseBundleConfig(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		json    string
		runtime string
		want    RuntimeContainer
		wantErr bool
	}{
		"containerd container": {json: `{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main","io.kubernetes.cri.sandbox-uid":"` + strings.ToUpper(uidA) + `","io.kubernetes.cri.sandbox-name":"train","io.kubernetes.cri.sandbox-namespace":"ml"}}`,
			want: RuntimeContainer{Name: "main", PodUID: uidA, PodName: "train", PodNamespace: "ml"}},
		"containerd sandbox": {json: `{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-name":"train","io.kubernetes.cri.sandbox-namespace":"ml"}}`,
			want: RuntimeContainer{Sandbox: true, PodName: "train", PodNamespace: "ml"}},
		"cri-o container": {runtime: RuntimeCRIO, json: `{"annotations":{"io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.container.name":"nb","io.kubernetes.pod.uid":"` + uidB + `","io.kubernetes.pod.name":"nb","io.kubernetes.pod.namespace":"lab"}}`,
			want: RuntimeContainer{Name: "nb", PodUID: uidB, PodName: "nb", PodNamespace: "lab"}},
		"not kubernetes":         {json: `{"annotations":{"org.opencontainers.image.ref.name":"x"}}`, wantErr: true},
		"container without name": {json: `{"annotations":{"io.kubernetes.cri.container-type":"container"}}`, wantErr: true},
		"pod uid not a uid":      {json: `{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"m","io.kubernetes.cri.sandbox-uid":"../x"}}`, wantErr: true},
		"not json":               {json: `{`, wantErr: true},
		// CRI-O copies the pod's annotations into the sandbox's bundle: a
		// tenant's pod naming itself a container of a victim's pod by
		// containerd's keys is still CRI-O's sandbox of its own pod.
		"cri-o sandbox with containerd keys from the pod's annotations": {runtime: RuntimeCRIO,
			json: `{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main","io.kubernetes.cri.sandbox-uid":"` + uidA + `","io.kubernetes.cri-o.ContainerType":"sandbox","io.kubernetes.pod.uid":"` + uidB + `","io.kubernetes.pod.name":"evil","io.kubernetes.pod.namespace":"lab"}}`,
			want: RuntimeContainer{Sandbox: true, PodUID: uidB, PodName: "evil", PodNamespace: "lab"}},
		"containerd keys alone in a cri-o bundle": {runtime: RuntimeCRIO, wantErr: true,
			json: `{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main"}}`},
		"cri-o keys alone in a containerd bundle": {wantErr: true,
			json: `{"annotations":{"io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.container.name":"nb"}}`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rt := tc.runtime
			if rt == "" {
				rt = RuntimeContainerd
			}
			got, err := ParseBundleConfig([]byte(tc.json), rt)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseBundleConfig() = %+v, %v; want error %v", got, err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestRuntimeStateReadsBundles(t *testing.T) {
	t.Parallel()
	containerd, crio := t.TempDir(), t.TempDir()
	idA := strings.Repeat("a", 64)
	idB := strings.Repeat("b", 64)
	write := func(path, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(containerd, idA, "config.json"), `{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main"}}`)
	write(filepath.Join(crio, idB, "userdata", "config.json"), `{"annotations":{"io.kubernetes.cri-o.ContainerType":"sandbox"}}`)
	r := NewRuntimeState([]string{containerd, crio})
	if c, ok := r.Lookup(idA); !ok || c.Name != "main" {
		t.Errorf("containerd bundle: %+v, %v", c, ok)
	}
	if c, ok := r.Lookup(idB); !ok || !c.Sandbox {
		t.Errorf("cri-o bundle: %+v, %v", c, ok)
	}
	for _, bad := range []string{strings.Repeat("c", 64), "../" + idA, idA[:63]} {
		if c, ok := r.Lookup(bad); ok {
			t.Errorf("Lookup(%q) = %+v", bad, c)
		}
	}
	// Remembered after the runtime removes the bundle, until forgotten.
	if err := os.RemoveAll(filepath.Join(containerd, idA)); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Lookup(idA); !ok {
		t.Error("a removed bundle was forgotten before Forget")
	}
	r.Forget(func(string) bool { return false })
	if _, ok := r.Lookup(idA); ok {
		t.Error("Forget kept a container")
	}
}

func FuzzParseBundleConfig(f *testing.F) {
	f.Add([]byte(`{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main"}}`))
	f.Add([]byte(`{"annotations":{"io.kubernetes.cri-o.ContainerType":"sandbox","io.kubernetes.pod.uid":"` + uidA + `"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, rt := range []string{RuntimeContainerd, RuntimeCRIO} {
			fuzzBundle(t, data, rt)
		}
	})
}

func fuzzBundle(t *testing.T, data []byte, runtime string) {
	t.Helper()
	c, err := ParseBundleConfig(data, runtime)
	if err != nil {
		return
	}
	if c.Sandbox == (c.Name != "") {
		t.Fatalf("a record that is both or neither a sandbox and a named container: %+v", c)
	}
	if c.PodUID != "" {
		if u, ok := canonicalUID(c.PodUID); !ok || u != c.PodUID {
			t.Fatalf("pod UID %q is not canonical", c.PodUID)
		}
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

// TestJoinTrustsOnlyTheKubeletsTree: a cgroup named after a container,
// outside the kubelet's tree or elsewhere than the runtime recorded, is
// never charged to that container's pod.
func TestJoinTrustsOnlyTheKubeletsTree(t *testing.T) {
	t.Parallel()
	id := strings.Repeat("c", 64)
	real := "/kubepods/burstable/pod" + uidA + "/" + id
	assignments := []podresources.Assignment{{Namespace: "ml", Pod: "train", Container: "main", DeviceIDs: []string{"GPU-1::0"}}}
	checkpoint := []CheckpointEntry{{PodUID: uidA, Container: "main", Resource: "nvidia.com/vgpu", DeviceIDs: []string{"GPU-1::0"}}}
	rc := RuntimeContainer{Name: "main", PodUID: uidA, PodNamespace: "ml", PodName: "train", CgroupsPath: real}
	tests := map[string]struct {
		path     string
		record   *RuntimeContainer
		attached bool
	}{
		"where the runtime put it":            {path: real, record: &rc, attached: true},
		"a host user's cgroup, recorded":      {path: "/user.slice/user-1000.slice/" + id, record: &rc},
		"a host user's cgroup, no record":     {path: "/user.slice/user-1000.slice/" + id},
		"a kubepods tree in a user's session": {path: "/user.slice/user-1000.slice/user@1000.service/kubepods/burstable/pod" + uidA + "/" + id},
		"elsewhere in kubepods than recorded": {path: "/kubepods/besteffort/pod" + uidA + "/" + id, record: &rc},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, ok := ParseCgroupPath(tc.path)
			if !ok {
				t.Fatalf("ParseCgroupPath(%q) found nothing", tc.path)
			}
			n := names{}
			if tc.record != nil {
				n[id] = *tc.record
			}
			r := Join([]GPUProcess{{PID: 1, GPU: "GPU-1", Container: c}}, assignments, checkpoint, "nvidia.com/vgpu", n, DRA{}, Stale{})
			if got := len(r.Attributed) == 1; got != tc.attached {
				t.Fatalf("attributed %v, want %v: %+v", got, tc.attached, r)
			}
			if !tc.attached && (len(r.Unauthorized) != 0 || len(r.Unattributed) != 1 || r.Unattributed[0].PodUID != "") {
				t.Errorf("a forged cgroup was charged to a pod: %+v", r)
			}
		})
	}
}
