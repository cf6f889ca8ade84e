package kubeletstate_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// checkpointJSON is a per-NUMA checkpoint holding one entry for pod uid.
func checkpointJSON(uid string) string {
	return `{"Data":{"PodDeviceEntries":[{"PodUID":"` + uid + `","ContainerName":"main","ResourceName":"nvidia.com/vgpu","DeviceIDs":{"-1":["GPU-a::0"]},"AllocResp":""}],"RegisteredDevices":{}},"Checksum":1}`
}

// writeAtomically writes as the kubelet does: a new file renamed into place.
func writeAtomically(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// TestCheckpointReadAgainOnlyWhenReplaced: each replacement of the file is
// read (whatever inode numbers the file system hands out, since the file
// last parsed is held open); an unchanged file is answered from memory; a
// missing one is an error, not the last answer.
func TestCheckpointReadAgainOnlyWhenReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, kubeletstate.CheckpointFile)
	c := kubeletstate.NewCheckpoint(dir)
	defer c.Close()
	for i, uid := range []string{"uid-1", "uid-2", "uid-3", "uid-2"} {
		writeAtomically(t, path, checkpointJSON(uid))
		for range 2 {
			entries, err := c.Read()
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 1 || entries[0].PodUID != uid {
				t.Fatalf("write %d: entries %+v, want pod %s", i, entries, uid)
			}
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(); err == nil {
		t.Error("a removed checkpoint was answered from memory")
	}
}

// listed is a pod-resources answer, fixed.
type listed []podresources.Assignment

func (l listed) List(context.Context) ([]podresources.Assignment, error) { return l, nil }

// TestSlicedGPUsReader: the GPUs of the slices pod-resources lists, read
// from the IDs themselves: a slice ID the current layout lacks (the node
// was re-sliced under a running pod) still holds its GPU, and device IDs
// that are not slice IDs name none.
func TestSlicedGPUsReader(t *testing.T) {
	t.Parallel()
	layout, err := vgpu.NewLayout([]vgpu.GPU{{UUID: "GPU-a", MemoryBytes: 4 << 30}, {UUID: "GPU-b", Index: 1, MemoryBytes: 4 << 30}},
		vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 2}})
	if err != nil {
		t.Fatal(err)
	}
	read := kubeletstate.SlicedGPUsReader(listed{
		{Namespace: "ml", Pod: "a", Container: "main", DeviceIDs: []string{"GPU-a::0", "GPU-a::1"}},
		{Namespace: "ml", Pod: "b", Container: "main", DeviceIDs: []string{"GPU-b::3", "not-a-slice"}},
		{Namespace: "ml", Pod: "c", Container: "main", Claims: []string{"uid-1"}},
	}, nil, "nvidia.com/vgpu", layout)
	got, err := read()
	if err != nil || len(got) != 2 || !got["GPU-a"] || !got["GPU-b"] {
		t.Errorf("SlicedGPUsReader = %v, %v; want GPU-a and GPU-b (GPU-b::3 is past its 2 slices)", got, err)
	}
	// A grant pod-resources does not list yet holds its GPU; recent
	// grants that cannot be read fail the answer.
	read = kubeletstate.SlicedGPUsReader(listed{}, recent{gpus: map[string]bool{"GPU-c": true}}, "nvidia.com/vgpu", layout)
	if got, err := read(); err != nil || len(got) != 1 || !got["GPU-c"] {
		t.Errorf("with a recent grant of GPU-c: %v, %v", got, err)
	}
	read = kubeletstate.SlicedGPUsReader(listed{}, recent{err: errors.New("torn")}, "nvidia.com/vgpu", layout)
	if got, err := read(); err == nil {
		t.Errorf("unreadable recent grants answered %v", got)
	}
}

// recent is the device plugin's record of recent grants, fixed.
type recent struct {
	gpus map[string]bool
	err  error
}

func (r recent) Pending() (map[string]bool, error) { return r.gpus, r.err }
