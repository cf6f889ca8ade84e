package kubeletstub

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// PodUID is the UID the stand-in gives a pod ("namespace/name" or "name"):
// derived from the name, so tests can predict it.
func PodUID(pod string) string {
	if !strings.Contains(pod, "/") {
		pod = "default/" + pod
	}
	h := sha256.Sum256([]byte(pod))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// writeCheckpointLocked writes the device manager checkpoint in the
// kubelet's format (kubelet_internal_checkpoint, per-NUMA device IDs), as
// the kubelet does after every allocation.
func (k *Kubelet) writeCheckpointLocked() error {
	type entry struct {
		PodUID        string
		ContainerName string
		ResourceName  string
		DeviceIDs     map[string][]string
		AllocResp     []byte
	}
	byOwner := map[[2]string][]string{} // (resource, owner) -> ids
	for resource, ids := range k.allocated {
		for id, owner := range ids {
			key := [2]string{resource, owner}
			byOwner[key] = append(byOwner[key], id)
		}
	}
	entries := []entry{}
	for key, ids := range byOwner {
		sort.Strings(ids)
		i := strings.LastIndex(key[1], "/")
		entries = append(entries, entry{PodUID: PodUID(key[1][:i]), ContainerName: key[1][i+1:], ResourceName: key[0], DeviceIDs: map[string][]string{"-1": ids}, AllocResp: k.responses[key]})
	}
	sort.Slice(entries, func(i, j int) bool {
		return entries[i].PodUID+entries[i].ContainerName < entries[j].PodUID+entries[j].ContainerName
	})
	data, err := json.Marshal(map[string]any{
		"Data":     map[string]any{"PodDeviceEntries": entries, "RegisteredDevices": map[string][]string{}},
		"Checksum": 0,
	})
	if err != nil {
		return err
	}
	path := filepath.Join(k.dir, "kubelet_internal_checkpoint")
	if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// ContainerID is a container's runtime ID, derived from its pod
// ("<namespace>/<name>") and name, as stable as PodUID.
func ContainerID(pod, name string) string {
	h := sha256.Sum256([]byte(pod + "/" + name))
	return fmt.Sprintf("%x", h)
}

// WriteContainerdBundle records a container of pod (ID ContainerID(pod,
// name)) as containerd does: its bundle's config.json under runtimeDir,
// with the CRI annotations that name it. It returns the container's ID.
func WriteContainerdBundle(runtimeDir, pod, name string) (string, error) {
	return WriteContainerdBundleWith(runtimeDir, pod, name, Bundle{})
}

// Bundle is what a test's bundle carries besides the CRI annotations.
type Bundle struct {
	// CgroupsPath is linux.cgroupsPath: where the runtime created the
	// container's cgroup; none when empty.
	CgroupsPath string
	// Env is one environment value of the container's process, as a
	// tenant's pod spec sets it.
	Env string
}

// WriteContainerdBundleWith writes a container's bundle as
// WriteContainerdBundle does, with b's fields, ordered as containerd
// writes them (the process and its environment before the annotations).
func WriteContainerdBundleWith(runtimeDir, pod, name string, b Bundle) (string, error) {
	id := ContainerID(pod, name)
	return id, WriteContainerdBundleOf(runtimeDir, id, pod, name, b)
}

// WriteContainerdBundleOf writes the bundle of container id, as
// WriteContainerdBundleWith does, for a container ID of the test's own.
func WriteContainerdBundleOf(runtimeDir, id, pod, name string, b Bundle) error {
	ns, podName, _ := strings.Cut(pod, "/")
	spec := map[string]any{
		"ociVersion": "1.2.0",
		"process":    map[string]any{"env": []string{"PATH=/usr/bin", "PAD=" + b.Env}},
		"annotations": map[string]string{
			"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": name,
			"io.kubernetes.cri.sandbox-uid": PodUID(pod), "io.kubernetes.cri.sandbox-name": podName, "io.kubernetes.cri.sandbox-namespace": ns,
		},
	}
	if b.CgroupsPath != "" {
		spec["linux"] = map[string]any{"cgroupsPath": b.CgroupsPath}
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(runtimeDir, id), 0o750); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(runtimeDir, id, "config.json"), data, 0o600)
}
