package host

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/node"
)

// sysUID is uid as the systemd driver spells it in slice names.
var sysUID = strings.ReplaceAll(uid, "-", "_")

// agentRoot is the agent's own container cgroup on a systemd-driver host:
// the root of its private cgroup namespace.
const agentRoot = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a0a0a0a_0a0a_4a0a_8a0a_0a0a0a0a0a0a.slice/cri-containerd-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.scope"

// TestParseInPrivateNamespace reads /proc/<pid>/cgroup lines as an agent in
// a private cgroup namespace reads them (containerd unshares one for every
// non-privileged container on a unified host), for every naming users
// meet, and checks the container and the host path found.
func TestParseInPrivateNamespace(t *testing.T) {
	t.Parallel()
	sysPod := "kubepods-burstable-pod" + sysUID + ".slice"
	hostSys := "/kubepods.slice/kubepods-burstable.slice/" + sysPod
	cgfsAgent := "/kubepods/burstable/pod0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a/" + strings.Repeat("a", 64)
	rootedAgent := "/custom.slice/kubepods.slice/kubepods-pod0a0a0a0a_0a0a_4a0a_8a0a_0a0a0a0a0a0a.slice/crio-" + strings.Repeat("a", 64) + ".scope"
	tests := map[string]struct {
		roots   map[string]string
		data    string
		want    node.Cgroup
		wantErr error
	}{
		"systemd containerd, burstable beside a burstable agent": {
			roots: map[string]string{"": agentRoot},
			data:  "0::/../../" + sysPod + "/cri-containerd-" + cid + ".scope\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBurstable,
				Paths: map[string]string{"": hostSys + "/cri-containerd-" + cid + ".scope"}},
		},
		"systemd cri-o, guaranteed pod": {
			roots: map[string]string{"": agentRoot},
			data:  "0::/../../../kubepods-pod" + sysUID + ".slice/crio-" + cid + ".scope\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeCRIO, QoS: QoSGuaranteed,
				Paths: map[string]string{"": "/kubepods.slice/kubepods-pod" + sysUID + ".slice/crio-" + cid + ".scope"}},
		},
		"systemd besteffort pod": {
			roots: map[string]string{"": agentRoot},
			data:  "0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod" + sysUID + ".slice/cri-containerd-" + cid + ".scope\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBestEffort,
				Paths: map[string]string{"": "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + sysUID + ".slice/cri-containerd-" + cid + ".scope"}},
		},
		"a process in its pod's own cgroup is pod-level": {
			roots: map[string]string{"": agentRoot},
			data:  "0::/../../" + sysPod + "\n",
			want:  node.Cgroup{PodUID: uid, QoS: QoSBurstable, Paths: map[string]string{"": hostSys}},
		},
		"a tenant's own subtree stays its container": {
			roots: map[string]string{"": agentRoot},
			data:  "0::/../../" + sysPod + "/cri-containerd-" + cid + ".scope/kubepods-pod0b0b0b0b_0b0b_4b0b_8b0b_0b0b0b0b0b0b.slice/x\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBurstable,
				Paths: map[string]string{"": hostSys + "/cri-containerd-" + cid + ".scope"}},
		},
		"a host service is no container": {
			roots:   map[string]string{"": agentRoot},
			data:    "0::/../../../../system.slice/containerd.service\n",
			wantErr: ErrNotContainer,
		},
		"cgroupfs driver, v1 and v2 (k3s's default)": {
			roots: map[string]string{"": cgfsAgent, "freezer": cgfsAgent, "memory": cgfsAgent},
			data:  "0::/../../pod" + uid + "/" + cid + "\n7:freezer:/../../pod" + uid + "/" + cid + "\n4:memory:/../../pod" + uid + "/" + cid + "\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSBurstable, Paths: map[string]string{
				"": "/kubepods/burstable/pod" + uid + "/" + cid, "freezer": "/kubepods/burstable/pod" + uid + "/" + cid, "memory": "/kubepods/burstable/pod" + uid + "/" + cid,
			}},
		},
		"kubepods under a non-root --cgroup-root": {
			roots: map[string]string{"": rootedAgent},
			data:  "0::/../../kubepods-burstable.slice/" + sysPod + "/crio-" + cid + ".scope\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeCRIO, QoS: QoSBurstable,
				Paths: map[string]string{"": "/custom.slice/kubepods.slice/kubepods-burstable.slice/" + sysPod + "/crio-" + cid + ".scope"}},
		},
		"a v1 hierarchy whose root is unknown is named, not placed": {
			roots: map[string]string{"": agentRoot},
			data:  "7:freezer:/../../" + sysPod + "/cri-containerd-" + cid + ".scope\n0::/../../" + sysPod + "/cri-containerd-" + cid + ".scope\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBurstable,
				Paths:      map[string]string{"": hostSys + "/cri-containerd-" + cid + ".scope"},
				Unresolved: `cgroup path relative to an unresolved cgroup namespace: "/../../` + sysPod + `/cri-containerd-` + cid + `.scope" (the agent's root in hierarchy "freezer" is unknown)`},
		},
		"the host's namespace: absolute paths as they are": {
			data: "0::" + hostSys + "/cri-containerd-" + cid + ".scope\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBurstable,
				Paths: map[string]string{"": hostSys + "/cri-containerd-" + cid + ".scope"}},
		},
		// What the agent met before it resolved its namespace: the line is
		// relative, the cgroup cannot be found, and that is said, not
		// guessed (a join under the mount would name a file that is not).
		"a relative line read as the host's: named, unresolved": {
			data: "0::/../../" + sysPod + "/cri-containerd-" + cid + ".scope\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBurstable, Paths: map[string]string{},
				Unresolved: `cgroup path relative to an unresolved cgroup namespace: "/../../` + sysPod + `/cri-containerd-` + cid + `.scope" climbs above the root of hierarchy "cgroup v2"`},
		},
		"climbing past the host's root is unresolved": {
			roots: map[string]string{"": "/a"},
			data:  "0::/../../kubepods/pod" + uid + "/" + cid + "\n",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSGuaranteed, Paths: map[string]string{},
				Unresolved: `cgroup path relative to an unresolved cgroup namespace: "/../../kubepods/pod` + uid + `/` + cid + `" climbs above the root of hierarchy "cgroup v2"`},
		},
		"two lines, two containers": {
			roots:   map[string]string{"": agentRoot, "freezer": "/"},
			data:    "0::/../../" + sysPod + "/cri-containerd-" + cid + ".scope\n7:freezer:/kubepods/pod0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b/" + cid + "\n",
			wantErr: ErrConflict,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns := RootNamespace()
			if tc.roots != nil {
				ns = NamespaceWithRoots(tc.roots)
			}
			got, err := ns.ParseProcCgroup([]byte(tc.data))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ParseProcCgroup = %+v, %v; want %v", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseProcCgroup (-want +got):\n%s", diff)
			}
		})
	}
}

// fakeHierarchy makes a cgroup-like tree: each dir with a cgroup.procs
// listing the PIDs given for it, and v2's cgroup.controllers at the top.
func fakeHierarchy(t *testing.T, top string, v2 bool, procs map[string][]int) {
	t.Helper()
	write := func(p, s string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if v2 {
		write(filepath.Join(top, "cgroup.controllers"), "")
	}
	for dir, pids := range procs {
		var b strings.Builder
		for _, p := range pids {
			b.WriteString(strconv.Itoa(p) + "\n")
		}
		write(filepath.Join(top, dir, "cgroup.procs"), b.String())
	}
}

func TestDiscoverNamespace(t *testing.T) {
	t.Parallel()
	const pid = 4242
	tree := map[string][]int{
		"":                                  {1},
		"system.slice/containerd.service":   {700, 701},
		agentRoot:                           {pid, 4243},
		"kubepods.slice/kubepods.slice/x/y": {4244},
	}
	tests := map[string]struct {
		self, init string
		hybrid     bool
		v1         bool
		want       map[string]string
		private    bool
		errText    string
	}{
		// A tenant's subtree is deeper than any container's own level: with
		// host init's line saying how deep the root lies, nothing below
		// that depth is read (the decoy below lists the PID only to show
		// it is never reached; a kernel lists a process in one cgroup).
		"host init says how deep": {self: "0::/\n", init: "0::/../../../../init.scope\n",
			want: map[string]string{"": agentRoot}, private: true},
		"a private namespace on a unified host": {self: "0::/\n", want: map[string]string{"": agentRoot}, private: true},
		"the host's namespace":                  {self: "0::" + agentRoot + "\n", want: map[string]string{"": "/"}},
		"a hybrid host: v2 at unified, v1 freezer beside": {
			self: "0::/\n7:freezer:/\n9:cpu,cpuacct:/\n", hybrid: true, v1: true,
			want: map[string]string{"": agentRoot, "freezer": agentRoot}, private: true,
		},
		"moved below its namespace's root": {
			self: "0::/sub\n", want: map[string]string{"": agentRoot}, private: true,
		},
		"nowhere in the hierarchy":     {self: "0::/\n", errText: "no cgroup under"},
		"outside its namespace's root": {self: "0::/../x\n", errText: "outside its namespace's root"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			v2 := root
			if tc.hybrid {
				v2 = filepath.Join(root, "unified")
			}
			procs := map[string][]int{}
			for k, v := range tree {
				procs[k] = v
			}
			if tc.errText == "no cgroup under" {
				procs[agentRoot] = []int{4243}
			}
			if tc.init != "" {
				procs["aaa.slice/deep/deeper/deeper/deeper"] = []int{pid}
			}
			if tc.self == "0::/sub\n" {
				procs[agentRoot] = nil
				procs[agentRoot+"/sub"] = []int{pid}
			}
			fakeHierarchy(t, v2, true, procs)
			if tc.v1 {
				fakeHierarchy(t, filepath.Join(root, "freezer"), false, procs)
			}
			ns, err := DiscoverNamespace([]byte(tc.self), []byte(tc.init), root, pid)
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("DiscoverNamespace = %v, %v; want an error with %q", ns, err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, ns.roots); diff != "" {
				t.Errorf("roots (-want +got):\n%s", diff)
			}
			if ns.Private() != tc.private {
				t.Errorf("Private() = %v, want %v", ns.Private(), tc.private)
			}
		})
	}
}
