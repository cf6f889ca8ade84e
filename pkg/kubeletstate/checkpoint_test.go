package kubeletstate

import (
	"encoding/base64"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/contract"

	"github.com/gpuslice/gpuslice/pkg/node"
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
	want := []node.CheckpointEntry{
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
