package attribution_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gpuslice/gpuslice/pkg/attribution"
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
	path := filepath.Join(dir, attribution.CheckpointFile)
	c := attribution.NewCheckpoint(dir)
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

func TestHeldGPUs(t *testing.T) {
	t.Parallel()
	entries, err := attribution.ParseCheckpoint([]byte(checkpointJSON("uid-1")))
	if err != nil {
		t.Fatal(err)
	}
	if got := attribution.HeldGPUs(entries, "nvidia.com/vgpu"); len(got) != 1 || !got["GPU-a"] {
		t.Errorf("HeldGPUs = %v, want GPU-a", got)
	}
	if got := attribution.HeldGPUs(entries, "example.com/fpga"); len(got) != 0 {
		t.Errorf("HeldGPUs of another resource = %v", got)
	}
}
