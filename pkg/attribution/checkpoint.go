package attribution

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// CheckpointFile is the kubelet device manager's checkpoint, in its device
// plugin directory. It records which pod UID and container hold which
// device IDs, the link the pod-resources API does not give.
const CheckpointFile = "kubelet_internal_checkpoint"

// CheckpointEntry is one container's devices of one resource.
type CheckpointEntry struct {
	PodUID    string
	Container string
	Resource  string
	DeviceIDs []string // sorted
	// Grants is what Allocate gave the container of each GPU, read back
	// from the response the kubelet recorded (its environment); nil when
	// the entry has no response or it is not one of gpuslice's. A
	// container keeps what it was given even after the node's slicing
	// changes under it.
	Grants []contract.Grant
}

// ParseCheckpoint reads the kubelet's device manager checkpoint, in the
// per-NUMA format of Kubernetes 1.20 and later or the flat one before it.
func ParseCheckpoint(data []byte) ([]CheckpointEntry, error) {
	var cp struct {
		Data struct {
			PodDeviceEntries []struct {
				PodUID        string
				ContainerName string
				ResourceName  string
				DeviceIDs     json.RawMessage
				AllocResp     []byte
			}
		}
	}
	if err := json.Unmarshal(data, &cp); err != nil {
		return nil, fmt.Errorf("parse device manager checkpoint: %w", err)
	}
	out := make([]CheckpointEntry, 0, len(cp.Data.PodDeviceEntries))
	for i, e := range cp.Data.PodDeviceEntries {
		if e.PodUID == "" || e.ContainerName == "" || e.ResourceName == "" {
			return nil, fmt.Errorf("device manager checkpoint entry %d lacks pod UID, container or resource", i)
		}
		ids, err := checkpointIDs(e.DeviceIDs)
		if err != nil {
			return nil, fmt.Errorf("device manager checkpoint entry %d: %w", i, err)
		}
		sort.Strings(ids)
		out = append(out, CheckpointEntry{PodUID: e.PodUID, Container: e.ContainerName, Resource: e.ResourceName, DeviceIDs: ids, Grants: grants(e.AllocResp)})
	}
	return out, nil
}

// grants reads what Allocate gave from the recorded response; a response
// that does not parse or carries no gpuslice grant gives nil.
func grants(allocResp []byte) []contract.Grant {
	if len(allocResp) == 0 {
		return nil
	}
	var r pluginapi.ContainerAllocateResponse
	if err := proto.Unmarshal(allocResp, &r); err != nil {
		return nil
	}
	g, err := contract.ParseGrants(r.GetEnvs())
	if err != nil {
		return nil
	}
	return g
}

func checkpointIDs(raw json.RawMessage) ([]string, error) {
	var perNUMA map[string][]string
	if err := json.Unmarshal(raw, &perNUMA); err == nil {
		var ids []string
		for _, v := range perNUMA {
			ids = append(ids, v...)
		}
		return ids, nil
	}
	var flat []string
	if err := json.Unmarshal(raw, &flat); err != nil {
		return nil, errors.New("DeviceIDs is neither a per-NUMA map nor a list")
	}
	return flat, nil
}

// ReadCheckpoint reads and parses the checkpoint in the device plugin dir.
func ReadCheckpoint(pluginDir string) ([]CheckpointEntry, error) {
	data, err := os.ReadFile(pluginDir + "/" + CheckpointFile) //nolint:gosec // the operator's --device-plugin-dir
	if err != nil {
		return nil, fmt.Errorf("read device manager checkpoint: %w", err)
	}
	return ParseCheckpoint(data)
}

// maxCheckpoint bounds what is read of the checkpoint: a node's devices
// take kilobytes.
const maxCheckpoint = 64 << 20

// Checkpoint reads the kubelet's checkpoint sample after sample, parsing
// it only when the kubelet replaced it. The kubelet writes it whole and
// renames it into place, so a file with the inode last parsed holds what
// was parsed; the file parsed stays open, so its inode number cannot be
// given to another file meanwhile. Size and modification time are
// compared too, for a writer that rewrites the file in place. It is not
// safe for concurrent use.
type Checkpoint struct {
	path    string
	file    *os.File
	stat    os.FileInfo
	entries []CheckpointEntry
}

// NewCheckpoint returns a reader of the checkpoint in pluginDir.
func NewCheckpoint(pluginDir string) *Checkpoint {
	return &Checkpoint{path: pluginDir + "/" + CheckpointFile}
}

// Read returns the checkpoint's entries, from memory while the file is the
// one parsed last.
func (c *Checkpoint) Read() ([]CheckpointEntry, error) {
	st, err := os.Stat(c.path)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read device manager checkpoint: %w", err)
	}
	if c.file != nil && os.SameFile(st, c.stat) && st.Size() == c.stat.Size() && st.ModTime().Equal(c.stat.ModTime()) {
		return c.entries, nil
	}
	c.Close()
	f, err := os.Open(c.path)
	if err != nil {
		return nil, fmt.Errorf("read device manager checkpoint: %w", err)
	}
	st, err = f.Stat()
	var data []byte
	if err == nil {
		data, err = io.ReadAll(io.LimitReader(f, maxCheckpoint))
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("read device manager checkpoint: %w", err)
	}
	entries, err := ParseCheckpoint(data)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	c.file, c.stat, c.entries = f, st, entries
	return entries, nil
}

// Close forgets what was read and closes the file held.
func (c *Checkpoint) Close() {
	if c.file != nil {
		_ = c.file.Close()
	}
	c.file, c.stat, c.entries = nil, nil, nil
}
