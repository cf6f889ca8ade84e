package host

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/node"
)

// QoS classes as they appear in pod cgroup paths.
const (
	QoSGuaranteed = "guaranteed"
	QoSBurstable  = "burstable"
	QoSBestEffort = "besteffort"
)

// Container runtimes recognised from cgroup naming.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimeDocker     = "docker"
)

// ErrNotContainer reports a process that is not in a pod's or a
// container's cgroup (a host process, the kubelet, a pod's conmon).
var ErrNotContainer = errors.New("not in a container cgroup")

// ErrConflict reports a process whose cgroup lines place it in two
// different containers or pods.
var ErrConflict = errors.New("cgroup lines name two containers")

// ForPID reads <procRoot>/<pid>/cgroup and parses it as read in the
// host's cgroup namespace.
func ForPID(procRoot string, pid int) (node.Cgroup, error) {
	return RootNamespace().ForPID(procRoot, pid)
}

// ParseProcCgroup is Namespace.ParseProcCgroup in the host's namespace.
func ParseProcCgroup(data []byte) (node.Cgroup, error) {
	return RootNamespace().ParseProcCgroup(data)
}

// ParseProcCgroup parses the content of /proc/<pid>/cgroup as read in the
// namespace. Every line is "<hierarchy-id>:<controllers>:<path>"; v2 is
// hierarchy 0 with no controllers. Each path is first made a host path
// (see Namespace). All lines that place the process in a pod or container
// must place it in the same one: a process the cgroup files put in two
// containers (only a process that can write cgroupfs outside its own
// subtree can arrange that) is ErrConflict. A line that names a container
// but cannot be resolved to a host path still names it (from the levels
// the line shows) and leaves its hierarchy out of Paths, with Unresolved
// saying why: the container is known, its cgroup is not.
func (n Namespace) ParseProcCgroup(data []byte) (node.Cgroup, error) {
	var found node.Cgroup
	matched := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	lines := 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		lines++
		id, rest, ok1 := strings.Cut(line, ":")
		controllers, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || !isDigits(id) || !strings.HasPrefix(path, "/") {
			return node.Cgroup{}, fmt.Errorf("malformed cgroup line %q", line)
		}
		keys := []string{""}
		if id != "0" || controllers != "" {
			keys = keys[:0]
			for _, ctl := range strings.Split(controllers, ",") {
				keys = append(keys, strings.TrimPrefix(ctl, "name="))
			}
		}
		host, rerr := n.resolve(keys[0], path)
		var c node.Cgroup
		var ok bool
		if rerr != nil {
			c, ok = parseRelative(path)
		} else {
			c, ok = ParseCgroupPath(host)
		}
		if !ok {
			continue
		}
		if !matched {
			matched = true
			found = c
			found.Paths = map[string]string{}
		} else if c.ContainerID != found.ContainerID || c.PodUID != found.PodUID {
			return node.Cgroup{}, fmt.Errorf("%w: %s and %s", ErrConflict, found.Describe(), c.Describe())
		}
		if rerr != nil {
			if found.Unresolved == "" {
				found.Unresolved = rerr.Error()
			}
			continue
		}
		for _, k := range keys {
			found.Paths[k] = c.Paths[""]
		}
	}
	if err := sc.Err(); err != nil {
		return node.Cgroup{}, fmt.Errorf("read cgroup lines: %w", err)
	}
	if lines == 0 {
		return node.Cgroup{}, errors.New("empty cgroup file")
	}
	if !matched {
		return node.Cgroup{}, ErrNotContainer
	}
	return found, nil
}

// parseRelative names the container of a path that could not be resolved
// to a host path: the levels below the common ancestor of the reader's
// namespace root and the process's cgroup ("../../kubepods-burstable-
// pod<uid>.slice/cri-containerd-<id>.scope"). Those start at the
// kubelet's QoS or pod level (the reader is a pod's container itself, so
// the common ancestor is kubepods or a QoS level) and are read by the
// same structure rule as a host path; the path is never returned.
func parseRelative(path string) (node.Cgroup, bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	i := 0
	for i < len(parts) && (parts[i] == ".." || parts[i] == ".") {
		i++
	}
	if i == len(parts) {
		return node.Cgroup{}, false
	}
	rest := parts[i:]
	if !isKubepods(rest[0]) {
		if _, _, pod := podElement(rest[0]); !pod && qosElement(rest[0]) == "" {
			return node.Cgroup{}, false
		}
		rest = append([]string{"kubepods"}, rest...)
	}
	c, ok := ParseCgroupPath("/" + strings.Join(rest, "/"))
	c.Paths = nil
	return c, ok
}

// ParseCgroupPath reads the container (or pod) a cgroup path places a
// process in, by the structure the kubelet and the runtime create, never
// by what lies below it: the first kubepods element, an optional QoS
// level, the pod's level "pod<uid>" and the runtime's container level.
// Anything deeper is the container's own subtree (a tenant may create it,
// and name it as it likes) and belongs to that container. A process in
// the pod's cgroup itself, or in a child of it that is not a container, is
// returned pod-level: PodUID set, ContainerID empty. Kubelets inside
// containers (kind) prefix the path; that prefix is skipped. Without a
// kubepods element (a kubelet run with cgroupsPerQOS=false, a runtime's
// own namespace) the shallowest element that is a container ID names the
// container. The returned Paths[""] is the container's (or pod's) own
// cgroup path, cut below the levels named above.
func ParseCgroupPath(path string) (node.Cgroup, bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	k := slices.IndexFunc(parts, isKubepods)
	if k < 0 {
		for i, p := range parts {
			if id, rt := containerID(p); id != "" {
				return node.Cgroup{ContainerID: id, Runtime: rt, Outside: true, Paths: map[string]string{"": "/" + strings.Join(parts[:i+1], "/")}}, true
			}
		}
		return node.Cgroup{}, false
	}
	var c node.Cgroup
	c.Outside = slices.ContainsFunc(parts[:k], userSession)
	i := k + 1
	if i < len(parts) {
		if qos := qosElement(parts[i]); qos != "" {
			c.QoS = qos
			i++
		}
	}
	if i >= len(parts) {
		return node.Cgroup{}, false // kubepods or a QoS level: no pod
	}
	uid, qos, ok := podElement(parts[i])
	if !ok {
		return node.Cgroup{}, false
	}
	c.PodUID = uid
	if qos != "" {
		c.QoS = qos
	}
	if c.QoS == "" {
		// A pod directly under kubepods is guaranteed.
		c.QoS = QoSGuaranteed
	}
	end := i + 1
	if end < len(parts) {
		if strings.HasPrefix(parts[end], "crio-conmon-") {
			return node.Cgroup{}, false // CRI-O's own monitor, a host process
		}
		if id, rt := containerID(parts[end]); id != "" {
			c.ContainerID, c.Runtime = id, rt
			end++
		}
	}
	c.Paths = map[string]string{"": "/" + strings.Join(parts[:end], "/")}
	return c, true
}

// userSession reports a cgroup element of a user's session, where systemd
// delegates cgroups to the user.
func userSession(p string) bool {
	return p == "user.slice" || strings.HasPrefix(p, "user@")
}

// isKubepods reports the kubelet's top-level element: "kubepods",
// "kubepods.slice", or a prefixed slice such as "kubelet-kubepods.slice".
func isKubepods(p string) bool {
	return p == "kubepods" || p == "kubepods.slice" || strings.HasSuffix(p, "-kubepods.slice")
}

// qosElement reads a QoS level element, or "".
func qosElement(p string) string {
	switch {
	case p == "burstable" || strings.HasSuffix(p, "kubepods-burstable.slice"):
		return QoSBurstable
	case p == "besteffort" || strings.HasSuffix(p, "kubepods-besteffort.slice"):
		return QoSBestEffort
	}
	return ""
}

// containerID reads a container ID from a cgroup leaf: a bare 64-hex ID
// (cgroupfs driver), or "<prefix>-<id>.scope" (systemd driver) for
// containerd ("cri-containerd-"), CRI-O ("crio-") and docker ("docker-").
// CRI-O's conmon scopes ("crio-conmon-") are not containers.
func containerID(leaf string) (id, runtime string) {
	if isContainerID(leaf) {
		return leaf, ""
	}
	scope, ok := strings.CutSuffix(leaf, ".scope")
	if !ok {
		// CRI-O with cgroupfs names the leaf "crio-<id>".
		if rest, ok := strings.CutPrefix(leaf, "crio-"); ok && isContainerID(rest) {
			return rest, RuntimeCRIO
		}
		return "", ""
	}
	for _, p := range []struct{ prefix, runtime string }{
		{"cri-containerd-", RuntimeContainerd},
		{"crio-", RuntimeCRIO},
		{"docker-", RuntimeDocker},
	} {
		if rest, ok := strings.CutPrefix(scope, p.prefix); ok && isContainerID(rest) {
			return rest, p.runtime
		}
	}
	return "", ""
}

// podElement reads a pod cgroup element: "pod<uid>" (cgroupfs) or
// "kubepods[-<qos>]-pod<uid_with_underscores>.slice" (systemd).
func podElement(p string) (uid, qos string, ok bool) {
	if rest, ok := strings.CutPrefix(p, "pod"); ok {
		if u, ok := canonicalUID(rest); ok {
			return u, "", true
		}
		return "", "", false
	}
	slice, ok := strings.CutSuffix(p, ".slice")
	// A kubelet with its own --cgroup-root (kind) prefixes slice names.
	k := strings.Index(slice, "kubepods-")
	if !ok || k < 0 {
		return "", "", false
	}
	slice = slice[k:]
	i := strings.LastIndex(slice, "-pod")
	if i < 0 {
		return "", "", false
	}
	u, ok := canonicalUID(strings.ReplaceAll(slice[i+len("-pod"):], "_", "-"))
	if !ok {
		return "", "", false
	}
	switch slice[:i] {
	case "kubepods":
		return u, QoSGuaranteed, true
	case "kubepods-burstable":
		return u, QoSBurstable, true
	case "kubepods-besteffort":
		return u, QoSBestEffort, true
	}
	return "", "", false
}

// canonicalUID accepts a UUID in 8-4-4-4-12 hex form and lowercases it.
func canonicalUID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return "", false
			}
		default:
			if !isHex(r) {
				return "", false
			}
		}
	}
	return strings.ToLower(s), true
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, r := range s {
		if !isHex(r) || (r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}

func isHex(r rune) bool {
	return r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F'
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
