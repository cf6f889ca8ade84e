package host

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/node"
)

const (
	cid = "3f1b8d6c2a0e4c5d9e7f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"
	uid = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
)

// v1Paths is every v1 controller of the fixtures mapped to path.
func v1Paths(path string) map[string]string {
	out := map[string]string{}
	for _, c := range []string{"pids", "hugetlb", "net_cls", "net_prio", "cpu", "cpuacct", "devices", "freezer", "memory", "blkio", "perf_event", "cpuset", "rdma", "systemd"} {
		out[c] = path
	}
	return out
}

func TestForPIDFixtures(t *testing.T) {
	t.Parallel()
	sysd := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_4a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-" + cid + ".scope"
	hybrid := v1Paths(sysd)
	hybrid[""] = sysd
	tests := map[string]struct {
		pid     int
		want    node.Cgroup
		wantErr error
		errText string
	}{
		"v1 cgroupfs burstable": {pid: 101, want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSBurstable,
			Paths: v1Paths("/kubepods/burstable/pod" + uid + "/" + cid)}},
		"v1 cgroupfs guaranteed": {pid: 102, want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSGuaranteed,
			Paths: v1Paths("/kubepods/pod" + uid + "/" + cid)}},
		"v1 cgroupfs cri-o besteffort": {pid: 103, want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeCRIO, QoS: QoSBestEffort,
			Paths: v1Paths("/kubepods/besteffort/pod" + uid + "/crio-" + cid)}},
		"v1 systemd containerd burstable": {pid: 104, want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBurstable,
			Paths: v1Paths(sysd)}},
		"v1 systemd docker guaranteed": {pid: 105, want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeDocker, QoS: QoSGuaranteed,
			Paths: v1Paths("/kubepods.slice/kubepods-pod1a2b3c4d_5e6f_4a8b_9c0d_1e2f3a4b5c6d.slice/docker-" + cid + ".scope")}},
		"v2 systemd cri-o besteffort": {pid: 106, want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeCRIO, QoS: QoSBestEffort,
			Paths: map[string]string{"": "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b3c4d_5e6f_4a8b_9c0d_1e2f3a4b5c6d.slice/crio-" + cid + ".scope"}}},
		"v2 cgroupfs containerd": {pid: 107, want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSBurstable,
			Paths: map[string]string{"": "/kubepods/burstable/pod" + uid + "/" + cid}}},
		"hybrid systemd": {pid: 108, want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBurstable, Paths: hybrid}},
		"kind nested systemd": {pid: 109, want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBurstable,
			Paths: map[string]string{"": "/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod1a2b3c4d_5e6f_4a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-" + cid + ".scope"}}},
		"nested cgroupfs": {pid: 110, want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSBurstable,
			Paths: v1Paths("/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/kubepods/burstable/pod" + uid + "/" + cid)}},
		"host process":       {pid: 111, wantErr: ErrNotContainer},
		"cri-o conmon":       {pid: 112, wantErr: ErrNotContainer},
		"no pod in the path": {pid: 113, want: node.Cgroup{ContainerID: cid, Outside: true, Paths: v1Paths("/k8s.io/" + cid)}},
		"v2 root":            {pid: 114, wantErr: ErrNotContainer},
		"malformed":          {pid: 115, errText: "malformed cgroup line"},
		"empty":              {pid: 116, errText: "empty cgroup file"},
		"two containers":     {pid: 117, wantErr: ErrConflict},
		"missing pid":        {pid: 999, errText: "no such file"},
		"invalid pid":        {pid: -1, errText: "invalid pid"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := ForPID("testdata/proc", tc.pid)
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ForPID(%d) = %+v, %v; want %v", tc.pid, got, err, tc.wantErr)
				}
				return
			case tc.errText != "":
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("ForPID(%d) = %+v, %v; want error mentioning %q", tc.pid, got, err, tc.errText)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestParseCgroupPathRejects(t *testing.T) {
	t.Parallel()
	for _, p := range []string{
		"/",
		"/kubepods",
		"/kubepods/burstable",
		"/kubepods.slice/kubepods-besteffort.slice",
		"/kubepods/burstable/podnot-a-uid/" + cid,  // no pod level: not the kubelet's structure
		"/kubepods/burstable/" + cid,               // a container without its pod level
		"/system.slice/containerd.service",         // host
		"/user.slice/user-0.slice/session-1.scope", // host
		"/k8s.io/" + strings.ToUpper(cid),          // runtime IDs are lower-case
		"/k8s.io/" + cid[:63],                      // short ID
		"/kubepods.slice/podman-" + cid + ".scope", // unknown runtime, no pod
	} {
		if c, ok := ParseCgroupPath(p); ok {
			t.Errorf("ParseCgroupPath(%q) = %+v, want no container", p, c)
		}
	}
}

// TestParseCgroupPathTenantSubtree holds the attacks a tenant that owns its
// container's cgroup subtree can mount: nesting, naming its children after
// other pods and containers, moving up to the pod's level.
func TestParseCgroupPathTenantSubtree(t *testing.T) {
	t.Parallel()
	const (
		victimUID = "99999999-8888-4777-8666-555555555555"
		victimCID = "9999999999999999999999999999999999999999999999999999999999999999"
	)
	own := "/kubepods/burstable/pod" + uid + "/" + cid
	ownSystemd := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_4a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-" + cid + ".scope"
	tests := map[string]struct {
		path string
		want node.Cgroup
	}{
		"child of its container": {path: own + "/worker",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSBurstable, Paths: map[string]string{"": own}}},
		"grandchild": {path: own + "/a/b/c",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSBurstable, Paths: map[string]string{"": own}}},
		"child named after a victim pod and container": {path: own + "/pod" + victimUID + "/" + victimCID,
			want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSBurstable, Paths: map[string]string{"": own}}},
		"child that replays the whole kubepods structure": {path: own + "/kubepods/pod" + victimUID + "/" + victimCID,
			want: node.Cgroup{PodUID: uid, ContainerID: cid, QoS: QoSBurstable, Paths: map[string]string{"": own}}},
		"systemd child named after a victim": {path: ownSystemd + "/kubepods-pod" + strings.ReplaceAll(victimUID, "-", "_") + ".slice/cri-containerd-" + victimCID + ".scope",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSBurstable, Paths: map[string]string{"": ownSystemd}}},
		"moved up to the pod's cgroup": {path: "/kubepods/burstable/pod" + uid,
			want: node.Cgroup{PodUID: uid, QoS: QoSBurstable, Paths: map[string]string{"": "/kubepods/burstable/pod" + uid}}},
		"a non-container child of the pod's cgroup": {path: "/kubepods/burstable/pod" + uid + "/escape/" + victimCID,
			want: node.Cgroup{PodUID: uid, QoS: QoSBurstable, Paths: map[string]string{"": "/kubepods/burstable/pod" + uid}}},
		"no kubepods: the shallowest container ID": {path: "/k8s.io/" + cid + "/" + victimCID,
			want: node.Cgroup{ContainerID: cid, Outside: true, Paths: map[string]string{"": "/k8s.io/" + cid}}},
		"kubepods under a user's session": {path: "/user.slice/user-1000.slice/user@1000.service/kubepods.slice/kubepods-pod" + uid + ".slice/cri-containerd-" + cid + ".scope",
			want: node.Cgroup{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, QoS: QoSGuaranteed, Outside: true,
				Paths: map[string]string{"": "/user.slice/user-1000.slice/user@1000.service/kubepods.slice/kubepods-pod" + uid + ".slice/cri-containerd-" + cid + ".scope"}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, ok := ParseCgroupPath(tc.path)
			if !ok {
				t.Fatalf("ParseCgroupPath(%q) found nothing", tc.path)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestForPIDOnThisHost(t *testing.T) {
	t.Parallel()
	// Whatever this host is (hybrid here, a container on some CI hosts), its
	// real cgroup file must parse: as a container, or as no container.
	c, err := ForPID("/proc", os.Getpid())
	if err != nil && !errors.Is(err, ErrNotContainer) {
		t.Fatalf("this process's cgroup file does not parse: %v", err)
	}
	t.Logf("this process: %+v, %v", c, err)
}

func FuzzParseProcCgroup(f *testing.F) {
	f.Add([]byte("0::/kubepods/burstable/pod" + uid + "/" + cid + "\n"))
	f.Add([]byte("6:memory:/kubepods.slice/kubepods-pod1a2b3c4d_5e6f_4a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-" + cid + ".scope\n"))
	f.Add([]byte("1:name=systemd:/system.slice/containerd.service\n"))
	f.Add([]byte("0::/\n"))
	f.Add([]byte("0::/../../kubepods-burstable-pod1a2b3c4d_5e6f_4a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-" + cid + ".scope\n4:freezer:/../x\n"))
	private := NamespaceWithRoots(map[string]string{"": agentRoot, "freezer": "/kubepods/burstable/pod" + uid})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, ns := range []Namespace{RootNamespace(), private} {
			c, err := ns.ParseProcCgroup(data)
			if err != nil {
				continue
			}
			if c.ContainerID != "" && !isContainerID(c.ContainerID) {
				t.Fatalf("container ID %q is not 64 lower-case hex", c.ContainerID)
			}
			if c.Key() == "" {
				t.Fatal("a container with neither pod nor container ID")
			}
			if c.PodUID != "" {
				if u, ok := canonicalUID(c.PodUID); !ok || u != c.PodUID {
					t.Fatalf("pod UID %q is not canonical", c.PodUID)
				}
			}
			if len(c.Paths) == 0 && c.Unresolved == "" {
				t.Fatal("a container with no cgroup paths and no reason")
			}
			for _, p := range c.Paths {
				// A container's own path is a clean host path and, parsed
				// again, the same container.
				if !strings.HasPrefix(p, "/") || (p != "/" && slices.ContainsFunc(strings.Split(p[1:], "/"), func(e string) bool { return e == "" || e == "." || e == ".." })) {
					t.Fatalf("path %q is not a clean host path", p)
				}
				again, ok := ParseCgroupPath(p)
				if !ok || again.ContainerID != c.ContainerID || again.PodUID != c.PodUID || again.Paths[""] != p {
					t.Fatalf("path %q does not name the container it was parsed from", p)
				}
			}
		}
	})
}
