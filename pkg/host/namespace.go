package host

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/node"
)

// The kernel renders /proc/<pid>/cgroup relative to the cgroup namespace of
// the process that reads it. A non-privileged container on a unified cgroup
// v2 host runs in a private cgroup namespace (containerd and CRI-O unshare
// one for it), so the agent there reads another pod's container as
// "0::/../../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope":
// relative to the agent's own container cgroup, with every level above the
// first common ancestor cut off. Namespace turns such lines back into host
// paths, which is what the cgroup mount the agent writes (the host's
// /sys/fs/cgroup, mounted in) and the driver's limits need.

// ErrUnresolved reports a cgroup line that is relative to a cgroup
// namespace whose place in the host's hierarchy is not known: the container
// can be named from the levels the line still shows, but its cgroup cannot
// be found, so nothing can be enforced on it.
var ErrUnresolved = errors.New("cgroup path relative to an unresolved cgroup namespace")

// Namespace maps the cgroup paths the agent reads, which the kernel renders
// relative to the agent's own cgroup namespace, to host paths. The zero
// value is the host's namespace: paths are taken as they are, and a path
// that climbs above its root ("..") is ErrUnresolved, never guessed.
type Namespace struct {
	// roots is the host path of the namespace's root in each hierarchy:
	// "" for cgroup v2, each controller name (without "name=") for v1. A
	// hierarchy missing from a non-nil map is one whose root could not be
	// found: its lines cannot be resolved.
	roots map[string]string
}

// RootNamespace is the host's own (initial) cgroup namespace: paths are
// read as they are.
func RootNamespace() Namespace { return Namespace{} }

// NamespaceWithRoots returns a namespace whose root in each hierarchy ("" for
// cgroup v2, controller names for v1) is at the given host path. A hierarchy
// not named cannot be resolved.
func NamespaceWithRoots(roots map[string]string) Namespace {
	m := make(map[string]string, len(roots))
	for k, v := range roots {
		m[k] = filepath.Clean("/" + v)
	}
	return Namespace{roots: m}
}

// Private reports whether the namespace is rooted below the host's root in
// some hierarchy, or its root in one is unknown.
func (n Namespace) Private() bool {
	for _, r := range n.roots {
		if r != "/" {
			return true
		}
	}
	return false
}

// Root returns the host path of the namespace's root in a hierarchy ("" for
// v2, a controller name for v1), and false where it is unknown.
func (n Namespace) Root(hierarchy string) (string, bool) {
	if n.roots == nil {
		return "/", true
	}
	r, ok := n.roots[hierarchy]
	return r, ok
}

// String describes the namespace for logs: "host" or its roots.
func (n Namespace) String() string {
	if !n.Private() {
		return "host"
	}
	keys := make([]string, 0, len(n.roots))
	for k := range n.roots {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		name := k
		if name == "" {
			name = "v2"
		}
		parts = append(parts, name+"="+n.roots[k])
	}
	return strings.Join(parts, " ")
}

// resolve joins a path read in the namespace to the hierarchy's root. A
// path that climbs above the host's root, or one in a hierarchy whose
// root is unknown, is ErrUnresolved.
func (n Namespace) resolve(hierarchy, p string) (string, error) {
	root, ok := n.Root(hierarchy)
	if !ok {
		return "", fmt.Errorf("%w: %q (the agent's root in hierarchy %q is unknown)", ErrUnresolved, p, hierarchyName(hierarchy))
	}
	parts := strings.Split(strings.Trim(root, "/"), "/")
	if root == "/" {
		parts = nil
	}
	for _, e := range strings.Split(p, "/") {
		switch e {
		case "", ".":
		case "..":
			if len(parts) == 0 {
				return "", fmt.Errorf("%w: %q climbs above the root of hierarchy %q", ErrUnresolved, p, hierarchyName(hierarchy))
			}
			parts = parts[:len(parts)-1]
		default:
			parts = append(parts, e)
		}
	}
	return "/" + strings.Join(parts, "/"), nil
}

func hierarchyName(h string) string {
	if h == "" {
		return "cgroup v2"
	}
	return h
}

// ForPID reads <procRoot>/<pid>/cgroup and parses it in the namespace.
func (n Namespace) ForPID(procRoot string, pid int) (node.Cgroup, error) {
	if pid <= 0 {
		return node.Cgroup{}, fmt.Errorf("invalid pid %d", pid)
	}
	path := filepath.Join(procRoot, strconv.Itoa(pid), "cgroup")
	data, err := os.ReadFile(path) //nolint:gosec // procRoot is the operator's --proc-root; pid is a number
	if err != nil {
		return node.Cgroup{}, fmt.Errorf("read cgroups of pid %d: %w", pid, err)
	}
	c, err := n.ParseProcCgroup(data)
	if err != nil {
		return c, fmt.Errorf("pid %d: %w", pid, err)
	}
	return c, nil
}

// DiscoverNamespace finds where the cgroup namespace of the process
// reading (this one: selfCgroup is its /proc/self/cgroup, pid its PID) is
// rooted in the host's hierarchies mounted under cgroupRoot. In each
// hierarchy the process's own host cgroup is the one whose cgroup.procs
// lists pid (the kernel's word, which no other process can forge: a
// process cannot be moved into a cgroup by anyone without write access to
// it); its line in selfCgroup is that cgroup's path relative to the
// namespace's root, so the root is the host path with that suffix cut. A
// v1 hierarchy not mounted under cgroupRoot is left out (its lines are
// then unresolved); the v2 hierarchy, where mounted, must be found.
//
// initCgroup is the host's PID 1's cgroup file as this process reads it
// (nil when unreadable). Host init lives outside every pod, so its line
// climbs ("..") exactly as many levels as the namespace's root lies deep:
// the search then reads only that depth and never descends below it, so a
// tenant who creates cgroups by the hundred thousand in its own subtree
// (deeper than any container's own level) cannot make the search give up.
func DiscoverNamespace(selfCgroup, initCgroup []byte, cgroupRoot string, pid int) (Namespace, error) {
	hints := depthHints(initCgroup)
	roots := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(selfCgroup))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		id, rest, ok1 := strings.Cut(line, ":")
		controllers, self, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || !isDigits(id) || !strings.HasPrefix(self, "/") {
			return Namespace{}, fmt.Errorf("malformed line %q in the agent's own cgroup file", line)
		}
		v2 := id == "0" && controllers == ""
		var mount string
		var names []string
		if v2 {
			m, err := CgroupV2Root(cgroupRoot)
			if err != nil {
				continue // no v2 hierarchy mounted: nothing of it to resolve
			}
			mount, names = m, []string{""}
		} else {
			for _, c := range strings.Split(controllers, ",") {
				names = append(names, strings.TrimPrefix(c, "name="))
			}
			mount = v1Mount(cgroupRoot, controllers, names)
			if mount == "" {
				continue
			}
		}
		hint, ok := hints[names[0]]
		if !ok {
			hint = -1
		}
		root, err := findRoot(mount, self, pid, hint)
		if err != nil {
			if v2 {
				return Namespace{}, fmt.Errorf("find the agent's cgroup v2 namespace root under %s: %w", mount, err)
			}
			continue
		}
		for _, name := range names {
			roots[name] = root
		}
	}
	if err := sc.Err(); err != nil {
		return Namespace{}, fmt.Errorf("read the agent's own cgroup file: %w", err)
	}
	return NamespaceWithRoots(roots), nil
}

// DiscoverOwnNamespace is DiscoverNamespace for this process, from
// /proc/self/cgroup (rendered in this process's own namespace whatever
// procfs it is read through) and host init's <procRoot>/1/cgroup.
func DiscoverOwnNamespace(cgroupRoot, procRoot string) (Namespace, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return Namespace{}, fmt.Errorf("read the agent's own cgroups: %w", err)
	}
	init, _ := os.ReadFile(filepath.Join(procRoot, "1", "cgroup")) //nolint:gosec // the operator's --proc-root
	return DiscoverNamespace(data, init, cgroupRoot, os.Getpid())
}

// depthHints reads, per hierarchy, how many levels host init's line
// climbs: the depth of the reader's namespace root there. Lines that do
// not climb give no hint (a PID 1 that is not the host's, in a PID
// namespace of its own, reads "/").
func depthHints(initCgroup []byte) map[string]int {
	hints := map[string]int{}
	for line := range strings.SplitSeq(string(initCgroup), "\n") {
		id, rest, ok1 := strings.Cut(strings.TrimSpace(line), ":")
		controllers, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || !strings.HasPrefix(path, "/..") {
			continue
		}
		up := 0
		for _, e := range strings.Split(strings.Trim(path, "/"), "/") {
			if e != ".." {
				break
			}
			up++
		}
		key := ""
		if id != "0" || controllers != "" {
			key, _, _ = strings.Cut(controllers, ",")
			key = strings.TrimPrefix(key, "name=")
		}
		hints[key] = up
	}
	return hints
}

// v1Mount finds a v1 hierarchy's mount under cgroupRoot: the directory
// named after its controllers ("cpu,cpuacct", "systemd"), or one named
// after any one of them (the usual symlinks).
func v1Mount(cgroupRoot, controllers string, names []string) string {
	for _, d := range append([]string{strings.TrimPrefix(controllers, "name=")}, names...) {
		dir := filepath.Join(cgroupRoot, d)
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err == nil {
			return dir
		}
	}
	return ""
}

// maxNamespaceWalk bounds the cgroups DiscoverNamespace reads in one
// hierarchy: a node has a few thousand.
const maxNamespaceWalk = 200_000

// findRoot finds the host path of the namespace root in the hierarchy
// mounted at mount, for a process with pid whose own line reads self;
// rootDepth, when not negative, is how deep the root lies.
func findRoot(mount, self string, pid, rootDepth int) (string, error) {
	if slices.Contains(strings.Split(self, "/"), "..") {
		return "", fmt.Errorf("the agent's own cgroup %q lies outside its namespace's root", self)
	}
	self = filepath.Clean(self)
	// In the host's namespace the line is the host path already.
	if holds(filepath.Join(mount, self), pid) {
		return "/", nil
	}
	want := -1 // the depth of the agent's own cgroup, where known
	if rootDepth >= 0 {
		want = rootDepth + depth(self)
	}
	host := ""
	seen := 0
	err := filepath.WalkDir(mount, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil //nolint:nilerr // a cgroup removed while walking
		}
		if !d.IsDir() {
			return nil
		}
		at := depth(strings.TrimPrefix(p, mount))
		if want >= 0 && at > want {
			return fs.SkipDir
		}
		if seen++; seen > maxNamespaceWalk {
			return fmt.Errorf("more than %d cgroups under %s", maxNamespaceWalk, mount)
		}
		if (want < 0 || at == want) && holds(p, pid) {
			host = "/" + strings.TrimPrefix(strings.TrimPrefix(p, mount), "/")
			return fs.SkipAll
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if host == "" {
		return "", fmt.Errorf("no cgroup under %s lists pid %d", mount, pid)
	}
	if self == "/" {
		return filepath.Clean(host), nil
	}
	root, ok := strings.CutSuffix(host, self)
	if !ok {
		return "", fmt.Errorf("the agent's host cgroup %s does not end with its namespace path %s", host, self)
	}
	return filepath.Clean("/" + root), nil
}

// depth is how many levels below the root a cgroup path lies.
func depth(p string) int {
	p = strings.Trim(p, "/")
	if p == "" {
		return 0
	}
	return strings.Count(p, "/") + 1
}

// holds reports whether the cgroup directory's cgroup.procs lists pid.
func holds(dir string, pid int) bool {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")) //nolint:gosec // a cgroup under the operator's --cgroup-root
	if err != nil {
		return false
	}
	want := strconv.Itoa(pid)
	for f := range strings.FieldsSeq(string(data)) {
		if f == want {
			return true
		}
	}
	return false
}

// ErrNoCgroupV2 reports a host without a cgroup v2 hierarchy.
var ErrNoCgroupV2 = errors.New("no cgroup v2 hierarchy")

// CgroupV2Root finds the cgroup v2 mount under cgroupRoot: the root itself
// on unified hosts, <root>/unified on hybrid ones.
func CgroupV2Root(cgroupRoot string) (string, error) {
	for _, dir := range []string{cgroupRoot, filepath.Join(cgroupRoot, "unified")} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err == nil {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w under %s", ErrNoCgroupV2, cgroupRoot)
}
