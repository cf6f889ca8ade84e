package kubeletstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// CheckpointFile is the kubelet device manager's checkpoint, in its device
// plugin directory. It records which pod UID and container hold which
// device IDs, the link the pod-resources API does not give.
const CheckpointFile = "kubelet_internal_checkpoint"

// ParseCheckpoint reads the kubelet's device manager checkpoint, in the
// per-NUMA format of Kubernetes 1.20 and later or the flat one before it.
func ParseCheckpoint(data []byte) ([]node.CheckpointEntry, error) {
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
	out := make([]node.CheckpointEntry, 0, len(cp.Data.PodDeviceEntries))
	for i, e := range cp.Data.PodDeviceEntries {
		if e.PodUID == "" || e.ContainerName == "" || e.ResourceName == "" {
			return nil, fmt.Errorf("device manager checkpoint entry %d lacks pod UID, container or resource", i)
		}
		ids, err := checkpointIDs(e.DeviceIDs)
		if err != nil {
			return nil, fmt.Errorf("device manager checkpoint entry %d: %w", i, err)
		}
		sort.Strings(ids)
		out = append(out, node.CheckpointEntry{PodUID: e.PodUID, Container: e.ContainerName, Resource: e.ResourceName, DeviceIDs: ids, Grants: grants(e.AllocResp)})
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
func ReadCheckpoint(pluginDir string) ([]node.CheckpointEntry, error) {
	data, err := os.ReadFile(pluginDir + "/" + CheckpointFile) //nolint:gosec // the operator's --device-plugin-dir
	if err != nil {
		return nil, fmt.Errorf("read device manager checkpoint: %w", err)
	}
	return ParseCheckpoint(data)
}

// Checkpoint reads the kubelet's device manager checkpoint sample after
// sample, parsing it only when the kubelet replaced it (see CachedFile).
// It is not safe for concurrent use.
type Checkpoint = CachedFile[[]node.CheckpointEntry]

// NewCheckpoint returns a reader of the checkpoint in pluginDir.
func NewCheckpoint(pluginDir string) *Checkpoint {
	return NewCachedFile(pluginDir+"/"+CheckpointFile, "device manager checkpoint", ParseCheckpoint)
}
