package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gpuslice/gpuslice/pkg/node"
)

// OCI annotations the CRI runtimes put on each container's bundle.
const (
	annContainerdType      = "io.kubernetes.cri.container-type"
	annContainerdName      = "io.kubernetes.cri.container-name"
	annContainerdPodUID    = "io.kubernetes.cri.sandbox-uid"
	annContainerdPodName   = "io.kubernetes.cri.sandbox-name"
	annContainerdNamespace = "io.kubernetes.cri.sandbox-namespace"
	annCRIOType            = "io.kubernetes.cri-o.ContainerType"
	annCRIOName            = "io.kubernetes.container.name"
	annCRIOPodUID          = "io.kubernetes.pod.uid"
	annCRIOPodName         = "io.kubernetes.pod.name"
	annCRIONamespace       = "io.kubernetes.pod.namespace"
)

// maxBundleConfig bounds how much of a bundle's config.json is read: far
// above what a pod spec can make it (the API server takes requests of up
// to 3 MiB, and JSON escaping makes a byte at most six), so that no tenant
// can push its own record past it. A bundle over it is unknown, and its
// pod is held at the pod's level (docs/enforcement.md).
const maxBundleConfig = 64 << 20

// failureTTL is how long a bundle that could not be read or parsed is
// remembered as such before it is read again: a tenant that makes its
// record costly to read pays that cost once a minute, not every sample.
const failureTTL = time.Minute

// RuntimeState reads containers' OCI bundles from the runtimes' state
// directories on the host: containerd's
// /run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/config.json
// (k3s and RKE2: under /run/k3s/containerd), read as containerd's, and
// CRI-O's /run/containers/storage/overlay-containers/<id>/userdata/config.json,
// read as CRI-O's.
// These are written by the runtime, outside the container, before the
// container's cgroup exists, so they answer for a cgroup the moment it is
// created. What was found is remembered (a container ID never changes
// hands); Forget drops it.
type RuntimeState struct {
	dirs []string

	mu    sync.Mutex
	known map[string]bundle
	swept int // len(known) after the last sweep
	// failed are the containers whose bundle exists but could not be read
	// or parsed, by ID, and when they were last tried.
	failed map[string]failure
	// now is the clock; time.Now unless a test sets it.
	now func() time.Time
}

// failure is a bundle that could not be read, and when it was tried.
type failure struct {
	err error
	at  time.Time
}

// bundle is a container's record and where it was read from.
type bundle struct {
	node.RuntimeContainer
	path string
}

var _ node.ContainerNames = (*RuntimeState)(nil)

// NewRuntimeState reads bundles under dirs.
func NewRuntimeState(dirs []string) *RuntimeState {
	return &RuntimeState{dirs: dirs, known: map[string]bundle{}, failed: map[string]failure{}, now: time.Now}
}

// Failure says why a container's bundle exists and could not be read, as
// of the last Lookup; nil when it could be, or when there is none.
func (r *RuntimeState) Failure(containerID string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed[containerID].err
}

// Lookup returns the runtime's record of a container.
func (r *RuntimeState) Lookup(containerID string) (node.RuntimeContainer, bool) {
	if !isContainerID(containerID) {
		return node.RuntimeContainer{}, false
	}
	r.mu.Lock()
	b, ok := r.known[containerID]
	f, failed := r.failed[containerID]
	now := r.now()
	r.mu.Unlock()
	if ok {
		return b.RuntimeContainer, true
	}
	if failed && now.Sub(f.at) < failureTTL {
		return node.RuntimeContainer{}, false
	}
	for _, dir := range r.dirs {
		for _, b := range []struct{ path, runtime string }{
			{filepath.Join(dir, containerID, "config.json"), RuntimeContainerd},
			{filepath.Join(dir, containerID, "userdata", "config.json"), RuntimeCRIO},
		} {
			c, err := readBundle(b.path, b.runtime)
			if errors.Is(err, fs.ErrNotExist) {
				continue // not this runtime's, or not there: cheap to ask again
			}
			r.mu.Lock()
			if err != nil {
				r.failed[containerID] = failure{err: fmt.Errorf("%s: %w", b.path, err), at: now}
				r.pruneFailedLocked(now)
			} else {
				delete(r.failed, containerID)
				r.known[containerID] = bundle{RuntimeContainer: c, path: b.path}
				r.sweepLocked()
			}
			r.mu.Unlock()
			return c, err == nil
		}
	}
	return node.RuntimeContainer{}, false
}

// Forget drops what is remembered of containers not in keep.
func (r *RuntimeState) Forget(keep func(containerID string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id := range r.known {
		if !keep(id) {
			delete(r.known, id)
		}
	}
	for id := range r.failed {
		if !keep(id) {
			delete(r.failed, id)
		}
	}
}

// pruneFailedLocked forgets failures older than failureTTL (they would be
// read again anyway) once there are many, so containers that come and go
// with unreadable records cannot grow what is remembered.
func (r *RuntimeState) pruneFailedLocked(now time.Time) {
	if len(r.failed) < 64 {
		return
	}
	for id, f := range r.failed {
		if now.Sub(f.at) >= failureTTL {
			delete(r.failed, id)
		}
	}
}

// sweepLocked forgets containers whose bundles the runtime has removed,
// whenever what is remembered has doubled since the last sweep.
func (r *RuntimeState) sweepLocked() {
	if len(r.known) < max(64, 2*r.swept) {
		return
	}
	for id, b := range r.known {
		if _, err := os.Stat(b.path); errors.Is(err, os.ErrNotExist) {
			delete(r.known, id)
		}
	}
	r.swept = len(r.known)
}

// errBundleTooLarge reports a bundle over maxBundleConfig.
var errBundleTooLarge = fmt.Errorf("bundle config is larger than %d MiB", maxBundleConfig>>20)

func readBundle(path, runtime string) (node.RuntimeContainer, error) {
	f, err := os.Open(path) //nolint:gosec // a runtime state dir the operator names, and a checked 64-hex ID
	if err != nil {
		return node.RuntimeContainer{}, err
	}
	defer func() { _ = f.Close() }()
	if st, err := f.Stat(); err == nil && st.Size() > maxBundleConfig {
		return node.RuntimeContainer{}, errBundleTooLarge
	}
	data, err := io.ReadAll(io.LimitReader(f, maxBundleConfig+1))
	if err != nil {
		return node.RuntimeContainer{}, err
	}
	if len(data) > maxBundleConfig {
		return node.RuntimeContainer{}, errBundleTooLarge
	}
	return ParseBundleConfig(data, runtime)
}

// ErrNotKubernetes reports a bundle without the CRI annotations: not a
// Kubernetes container.
var ErrNotKubernetes = errors.New("bundle has no Kubernetes container annotations")

// ParseBundleConfig reads the Kubernetes annotations of an OCI bundle's
// config.json as runtime (RuntimeContainerd or RuntimeCRIO; where the
// bundle lies says which) writes them, by that runtime's own keys only:
// CRI-O copies a pod's annotations into its sandbox's bundle, so
// containerd's key names there are the tenant's to write, and the other
// way round where containerd passes pod annotations through.
func ParseBundleConfig(data []byte, runtime string) (node.RuntimeContainer, error) {
	// Only the fields read are decoded; the rest (the process's
	// environment, the tenant's to fill) is skipped without being kept.
	var spec struct {
		Annotations map[string]string `json:"annotations"`
		Linux       struct {
			CgroupsPath string `json:"cgroupsPath"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return node.RuntimeContainer{}, fmt.Errorf("parse bundle config: %w", err)
	}
	a := spec.Annotations
	keys := [5]string{annContainerdType, annContainerdName, annContainerdNamespace, annContainerdPodName, annContainerdPodUID}
	switch runtime {
	case RuntimeContainerd:
	case RuntimeCRIO:
		keys = [5]string{annCRIOType, annCRIOName, annCRIONamespace, annCRIOPodName, annCRIOPodUID}
	default:
		return node.RuntimeContainer{}, fmt.Errorf("bundles of runtime %q are not read", runtime)
	}
	typ := a[keys[0]]
	c := node.RuntimeContainer{Name: a[keys[1]], PodNamespace: a[keys[2]], PodName: a[keys[3]], CgroupsPath: spec.Linux.CgroupsPath}
	if u := a[keys[4]]; u != "" {
		uid, ok := canonicalUID(u)
		if !ok {
			return node.RuntimeContainer{}, fmt.Errorf("bundle names pod UID %q, not a UID", u)
		}
		c.PodUID = uid
	}
	switch typ {
	case "sandbox":
		c.Sandbox, c.Name = true, ""
	case "container":
		if c.Name == "" {
			return node.RuntimeContainer{}, errors.New("bundle of a container without a container name")
		}
	default:
		return node.RuntimeContainer{}, ErrNotKubernetes
	}
	return c, nil
}
