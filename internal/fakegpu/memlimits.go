package fakegpu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu/protocol"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// limitKey names one cgroup's limits on one GPU.
type limitKey struct {
	uuid string
	dir  string // full path of the cgroup's directory
}

// OOMSuffix ends the file through which the fake driver refuses a
// workload's allocation.
const OOMSuffix = protocol.OOMSuffix

var _ nvml.MemoryLimiter = (*Node)(nil)

// MemoryLimitsSupported reports whether the fake driver has per-cgroup
// memory limits (Config.DriverMemoryLimits) and cgroupDir is a cgroup.
func (n *Node) MemoryLimitsSupported(cgroupDir string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.limitTargetLocked("", cgroupDir)
}

func (n *Node) limitTargetLocked(uuid, dir string) error {
	call := "nvmlDeviceGetMemoryLimits_v1"
	if !n.driverLimits {
		return &nvml.ErrCall{Call: call, Err: fmt.Errorf("%w: driver %s has no per-cgroup memory limits", nvml.ErrNotSupported, n.system.DriverVersion)}
	}
	if uuid != "" {
		u, err := n.unitLocked(uuid)
		if err != nil {
			return &nvml.ErrCall{Call: "nvmlDeviceGetHandleByUUID", Err: err}
		}
		if u.parent != "" || u.dev.MIG.Current {
			return &nvml.ErrCall{Call: call, Err: fmt.Errorf("%w: the driver's per-cgroup memory limits do not support MIG", nvml.ErrNotSupported)}
		}
	}
	if !filepath.IsAbs(dir) {
		return &nvml.ErrCall{Call: call, Err: fmt.Errorf("cgroup %q is not an absolute path", dir)}
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
		return &nvml.ErrCall{Call: call, Err: fmt.Errorf("cgroup %s: %w", dir, err)}
	}
	return nil
}

// SetMemoryLimits sets one cgroup's limits on one GPU. A soft limit of 0
// with no hard limit clears them.
func (n *Node) SetMemoryLimits(uuid, cgroupDir string, softBytes, hardBytes uint64) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.limitTargetLocked(uuid, cgroupDir); err != nil {
		return err
	}
	if softBytes > hardBytes {
		return &nvml.ErrCall{Call: "nvmlDeviceSetMemoryLimits_v1", Err: fmt.Errorf("soft limit %d above hard limit %d", softBytes, hardBytes)}
	}
	k := limitKey{uuid, cgroupDir}
	if softBytes == 0 && hardBytes == nvml.NoMemoryLimit {
		delete(n.limits, k)
		return nil
	}
	n.limits[k] = nvml.MemoryLimits{SoftBytes: softBytes, HardBytes: hardBytes}
	n.limitSetAt[k] = time.Now()
	return nil
}

// LimitSetAt is when the cgroup's limits on the GPU were last set; zero if
// never. Benchmarks time the driver tier by it, at the clock's resolution
// rather than their poll's.
func (n *Node) LimitSetAt(uuid, cgroupDir string) time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.limitSetAt[limitKey{uuid, cgroupDir}]
}

// MemoryLimits reads one cgroup's limits on one GPU and the memory its
// processes hold there.
func (n *Node) MemoryLimits(uuid, cgroupDir string) (nvml.MemoryLimits, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.limitTargetLocked(uuid, cgroupDir); err != nil {
		return nvml.MemoryLimits{}, err
	}
	n.advanceLocked(n.now())
	l, ok := n.limits[limitKey{uuid, cgroupDir}]
	if !ok {
		l = nvml.MemoryLimits{HardBytes: nvml.NoMemoryLimit}
	}
	l.UsedBytes = n.cgroupUsedLocked(uuid, cgroupDir, -1)
	return l, nil
}

// LeakedSoftBytes is the sum of the soft limits of cgroups that were
// removed while their soft limit was still set. On a dmem driver those
// stay reserved in the cgroups' ancestors, so an agent must clear a
// container's soft limit before its cgroup goes away.
func (n *Node) LeakedSoftBytes() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropRemovedLocked()
	return n.leaked
}

// dropRemovedLocked forgets the limits of removed cgroups, as the driver
// does, counting soft limits left set.
func (n *Node) dropRemovedLocked() {
	for k, l := range n.limits {
		if _, err := os.Stat(k.dir); errors.Is(err, os.ErrNotExist) {
			n.leaked += l.SoftBytes
			delete(n.limits, k)
		}
	}
}

// cgroupUsedLocked sums the memory granted on a GPU to the processes of a
// cgroup, leaving out one pid (-1: none).
func (n *Node) cgroupUsedLocked(uuid, dir string, except int) uint64 {
	var used uint64
	for pid, granted := range n.admitted {
		if pid != except && n.gpuOf[pid] == uuid && inCgroup(pid, dir) {
			used += granted
		}
	}
	return used
}

// inCgroup reports whether process pid is in the cgroup whose directory
// is dir or below it, by the kernel's own lists (cgroup.procs), as the
// driver knows it: never by the process's /proc/<pid>/cgroup, which reads
// relative to the reader's cgroup namespace (the agent's, when this fake
// runs in it).
func inCgroup(pid int, dir string) bool {
	want := strconv.Itoa(pid)
	found := false
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil //nolint:nilerr // a cgroup removed while walking
		}
		data, rerr := os.ReadFile(filepath.Join(p, "cgroup.procs")) //nolint:gosec // a cgroup the agent limited
		if rerr != nil {
			return nil //nolint:nilerr // removed while walking
		}
		for f := range strings.FieldsSeq(string(data)) {
			if f == want {
				found = true
				return filepath.SkipAll
			}
		}
		return nil
	})
	return found
}

// admitLocked grants the workloads the GPU memory they ask for, as the
// driver's allocator would: growth that would take a process's cgroup past
// its hard limit on that GPU is refused and the workload told so; what it
// held before stays held.
func (n *Node) admitLocked(work map[int]WorkloadState) {
	n.dropRemovedLocked()
	for pid := range n.admitted {
		if _, ok := work[pid]; !ok {
			delete(n.admitted, pid)
			delete(n.gpuOf, pid)
		}
	}
	pids := make([]int, 0, len(work))
	for pid := range work {
		pids = append(pids, pid)
	}
	sort.Ints(pids) // older processes allocate first
	for _, pid := range pids {
		w := work[pid]
		n.gpuOf[pid] = w.GPU
		held := n.admitted[pid]
		if w.MemoryBytes <= held || !n.driverLimits {
			n.admitted[pid] = w.MemoryBytes
			continue
		}
		limit, dir := n.limitForLocked(w.GPU, pid)
		if limit == nvml.NoMemoryLimit {
			n.admitted[pid] = w.MemoryBytes
			continue
		}
		others := n.cgroupUsedLocked(w.GPU, dir, pid)
		if others+w.MemoryBytes <= limit {
			n.admitted[pid] = w.MemoryBytes
			continue
		}
		if _, seen := n.admitted[pid]; !seen {
			n.admitted[pid] = 0
		}
		msg := fmt.Sprintf("out of memory: allocating %d MiB on %s would take cgroup %s to %d MiB, past its hard limit of %d MiB\n",
			(w.MemoryBytes-held)>>20, w.GPU, dir, (others+w.MemoryBytes)>>20, limit>>20)
		// Written whole, then renamed into place: the workload polls for
		// the file and must never read it half-written.
		oom := filepath.Join(n.workDir, strconv.Itoa(pid)+OOMSuffix)
		if os.WriteFile(oom+".tmp", []byte(msg), 0o600) == nil {
			_ = os.Rename(oom+".tmp", oom)
		}
	}
}

// limitForLocked finds the hard limit on a GPU of the cgroup process pid
// is in.
func (n *Node) limitForLocked(uuid string, pid int) (uint64, string) {
	for k, l := range n.limits {
		if k.uuid == uuid && inCgroup(pid, k.dir) {
			return l.HardBytes, k.dir
		}
	}
	return nvml.NoMemoryLimit, ""
}

// syncLimitsFileLocked takes the limits the fake NVML library recorded in
// path as the node's own: through that face, the library is the driver.
func (n *Node) syncLimitsFileLocked(path string) error {
	data, err := os.ReadFile(path) //nolint:gosec // the test's own state file
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read fake NVML limits: %w", err)
	}
	limits := map[limitKey]nvml.MemoryLimits{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 4 {
			continue
		}
		soft, err1 := strconv.ParseUint(f[1], 10, 64)
		hard, err2 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		k := limitKey{f[0], f[3]}
		if _, err := os.Stat(k.dir); errors.Is(err, os.ErrNotExist) {
			// Removed with its limits set: the driver drops them, and a
			// soft limit still set leaks (counted once, when first seen).
			if l, ok := n.limits[k]; ok {
				n.leaked += l.SoftBytes
			}
			continue
		}
		limits[k] = nvml.MemoryLimits{SoftBytes: soft, HardBytes: hard}
	}
	n.limits = limits
	return nil
}
