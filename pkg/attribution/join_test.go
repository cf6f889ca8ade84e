package attribution

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/podresources"
)

const (
	uidA = "aaaaaaaa-0000-4000-8000-000000000001"
	uidB = "bbbbbbbb-0000-4000-8000-000000000002"
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

func TestEnvSliceIDs(t *testing.T) {
	t.Parallel()
	env := []byte("PATH=/bin\x00GPUSLICE_SLICE_IDS=GPU-1::0,GPU-1::1\x00HOME=/\x00")
	if diff := cmp.Diff([]string{"GPU-1::0", "GPU-1::1"}, EnvSliceIDs(env)); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	for _, e := range []string{"", "PATH=/bin\x00", "GPUSLICE_SLICE_IDS=\x00", "XGPUSLICE_SLICE_IDS=a\x00"} {
		if got := EnvSliceIDs([]byte(e)); got != nil {
			t.Errorf("EnvSliceIDs(%q) = %v", e, got)
		}
	}
}

func TestJoin(t *testing.T) {
	t.Parallel()
	const res = "nvidia.com/vgpu"
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
	inPod := func(uid string) Container { return Container{PodUID: uid, ContainerID: cid} }
	tests := map[string]struct {
		proc       GPUProcess
		checkpoint []CheckpointEntry
		want       *Attributed
		reason     string
	}{
		"only container of its pod on the gpu": {
			proc: GPUProcess{PID: 1, GPU: "GPU-2", Container: inPod(uidB)},
			want: &Attributed{Assignment: nb, PodUID: uidB, By: ByCgroup},
		},
		"env picks among its own pod's containers": {
			proc: GPUProcess{PID: 2, GPU: "GPU-1", Container: inPod(uidA), EnvSliceIDs: []string{"GPU-1::2"}},
			want: &Attributed{Assignment: sidecar, PodUID: uidA, By: ByCgroup},
		},
		"env naming another pod's slices cannot frame it": {
			proc:   GPUProcess{PID: 3, GPU: "GPU-1", Container: inPod(uidA), EnvSliceIDs: []string{"GPU-1::3", "GPU-2::0"}},
			reason: "several containers of its pod",
		},
		"pod without slices on this gpu": {
			proc:   GPUProcess{PID: 4, GPU: "GPU-2", Container: inPod(uidA)},
			reason: "holds no slices of this GPU",
		},
		"no checkpoint: env decides": {
			proc:       GPUProcess{PID: 5, GPU: "GPU-1", Container: inPod(uidA), EnvSliceIDs: []string{"GPU-1::1", "GPU-1::0"}},
			checkpoint: []CheckpointEntry{},
			want:       &Attributed{Assignment: train, By: ByEnv},
		},
		"no checkpoint, no env": {
			proc:       GPUProcess{PID: 6, GPU: "GPU-1", Container: inPod(uidA)},
			checkpoint: []CheckpointEntry{},
			reason:     "no pod UID and no matching GPUSLICE_SLICE_IDS",
		},
		"env of slices on another gpu": {
			proc:       GPUProcess{PID: 7, GPU: "GPU-2", Container: inPod(uidA), EnvSliceIDs: train.DeviceIDs},
			checkpoint: []CheckpointEntry{},
			reason:     "no matching",
		},
		"host process": {
			proc:   GPUProcess{PID: 8, GPU: "GPU-1"},
			reason: "not in a container",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cp := checkpoint
			if tc.checkpoint != nil {
				cp = tc.checkpoint
			}
			ok, bad := Join([]GPUProcess{tc.proc}, assignments, cp, res)
			if tc.want != nil {
				tc.want.GPUProcess = tc.proc
				if len(ok) != 1 || len(bad) != 0 {
					t.Fatalf("Join() = %+v, %+v; want one attributed", ok, bad)
				}
				if diff := cmp.Diff(*tc.want, ok[0]); diff != "" {
					t.Errorf("(-want +got)\n%s", diff)
				}
				return
			}
			if len(ok) != 0 || len(bad) != 1 || !strings.Contains(bad[0].Reason, tc.reason) {
				t.Fatalf("Join() = %+v, %+v; want unattributed because %q", ok, bad, tc.reason)
			}
		})
	}
}
