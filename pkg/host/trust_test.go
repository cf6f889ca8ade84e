package host

import (
	"strings"
	"testing"

	"github.com/gpuslice/gpuslice/pkg/node"
)

// records is a runtime record by container ID.
type records map[string]node.RuntimeContainer

func (r records) Lookup(id string) (node.RuntimeContainer, bool) { c, ok := r[id]; return c, ok }

// TestJoinTrustsOnlyTheKubeletsTree: a cgroup named after a container,
// outside the kubelet's tree or elsewhere than the runtime recorded, is
// never charged to that container's pod.
func TestJoinTrustsOnlyTheKubeletsTree(t *testing.T) {
	t.Parallel()
	id := strings.Repeat("c", 64)
	real := "/kubepods/burstable/pod" + uidA + "/" + id
	assignments := []node.Assignment{{Namespace: "ml", Pod: "train", Container: "main", DeviceIDs: []string{"GPU-1::0"}}}
	checkpoint := []node.CheckpointEntry{{PodUID: uidA, Container: "main", Resource: "nvidia.com/vgpu", DeviceIDs: []string{"GPU-1::0"}}}
	rc := node.RuntimeContainer{Name: "main", PodUID: uidA, PodNamespace: "ml", PodName: "train", CgroupsPath: real}
	tests := map[string]struct {
		path     string
		record   *node.RuntimeContainer
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
			n := records{}
			if tc.record != nil {
				n[id] = *tc.record
			}
			r := node.Join([]node.GPUProcess{{PID: 1, UUID: "GPU-1", Container: c}}, assignments, checkpoint, "nvidia.com/vgpu", n, node.DRA{}, node.Stale{})
			if got := len(r.Attributed) == 1; got != tc.attached {
				t.Fatalf("attributed %v, want %v: %+v", got, tc.attached, r)
			}
			if !tc.attached && (len(r.Unauthorized) != 0 || len(r.Unattributed) != 1 || r.Unattributed[0].PodUID != "") {
				t.Errorf("a forged cgroup was charged to a pod: %+v", r)
			}
		})
	}
}
