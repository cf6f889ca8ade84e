package attribution

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// Container is what a process's cgroups say about its container.
type Container struct {
	// PodUID is the pod's UID in its canonical dashed form; empty when the
	// path carries no pod (e.g. a kubelet run with cgroupsPerQOS=false).
	PodUID string
	// ContainerID is the runtime's 64-hex container ID.
	ContainerID string
	// Runtime is RuntimeContainerd, RuntimeCRIO, RuntimeDocker, or empty
	// when the naming does not say (cgroupfs paths are bare IDs).
	Runtime string
	// QoS is the pod's QoS class from the path; empty when unknown.
	QoS string
	// Paths maps each cgroup v1 controller (e.g. "memory", "freezer") to the
	// container's cgroup path in that hierarchy, and "" to its cgroup v2
	// path. Only hierarchies where the process is in the container's cgroup
	// are listed.
	Paths map[string]string
}

// ErrNotContainer reports a process that is not in a container's cgroup
// (a host process, the kubelet, a pod's conmon).
var ErrNotContainer = errors.New("not in a container cgroup")

// ForPID reads <procRoot>/<pid>/cgroup and parses it.
func ForPID(procRoot string, pid int) (Container, error) {
	if pid <= 0 {
		return Container{}, fmt.Errorf("invalid pid %d", pid)
	}
	path := filepath.Join(procRoot, strconv.Itoa(pid), "cgroup")
	data, err := os.ReadFile(path) //nolint:gosec // procRoot is the operator's --proc-root; pid is a number
	if err != nil {
		return Container{}, fmt.Errorf("read cgroups of pid %d: %w", pid, err)
	}
	c, err := ParseProcCgroup(data)
	if err != nil {
		return Container{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return c, nil
}

// ParseProcCgroup parses the content of /proc/<pid>/cgroup. Every line is
// "<hierarchy-id>:<controllers>:<path>"; v2 is hierarchy 0 with no
// controllers. All lines that name a container must name the same one.
func ParseProcCgroup(data []byte) (Container, error) {
	var found Container
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	n := 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		n++
		id, rest, ok1 := strings.Cut(line, ":")
		controllers, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || !isDigits(id) || !strings.HasPrefix(path, "/") {
			return Container{}, fmt.Errorf("malformed cgroup line %q", line)
		}
		c, ok := ParseCgroupPath(path)
		if !ok {
			continue
		}
		if found.Paths == nil {
			found = c
			found.Paths = map[string]string{}
		} else if c.ContainerID != found.ContainerID || c.PodUID != found.PodUID {
			return Container{}, fmt.Errorf("cgroup lines name two containers: %s and %s", found.ContainerID, c.ContainerID)
		}
		if id == "0" && controllers == "" {
			found.Paths[""] = path
			continue
		}
		for _, ctl := range strings.Split(controllers, ",") {
			found.Paths[strings.TrimPrefix(ctl, "name=")] = path
		}
	}
	if err := sc.Err(); err != nil {
		return Container{}, fmt.Errorf("read cgroup lines: %w", err)
	}
	if n == 0 {
		return Container{}, errors.New("empty cgroup file")
	}
	if found.Paths == nil {
		return Container{}, ErrNotContainer
	}
	return found, nil
}

// ParseCgroupPath reads the container from one cgroup path. The last path
// element names the container; the pod and QoS come from the elements
// before it, wherever the kubepods part starts (kubelets inside containers,
// as with kind, add their own prefix).
func ParseCgroupPath(path string) (Container, bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) == 0 {
		return Container{}, false
	}
	var c Container
	leaf := parts[len(parts)-1]
	c.ContainerID, c.Runtime = containerID(leaf)
	if c.ContainerID == "" {
		return Container{}, false
	}
	for _, p := range parts[:len(parts)-1] {
		if uid, qos, ok := podElement(p); ok {
			c.PodUID = uid
			if qos != "" {
				c.QoS = qos
			}
			continue
		}
		switch {
		case p == "burstable" || strings.HasSuffix(p, "kubepods-burstable.slice"):
			c.QoS = QoSBurstable
		case p == "besteffort" || strings.HasSuffix(p, "kubepods-besteffort.slice"):
			c.QoS = QoSBestEffort
		}
	}
	if c.PodUID != "" && c.QoS == "" {
		// A pod directly under kubepods is guaranteed.
		c.QoS = QoSGuaranteed
	}
	return c, true
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
