package node

import (
	"sort"
	"time"

	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// GPUReading is what one sample read of one GPU.
type GPUReading struct {
	Device gpudev.Device
	// Instance is set when the reading is of a MIG instance in force,
	// read as a device of its own: Device is then its GPU's, with the
	// instance's UUID and memory.
	Instance *gpudev.InForce
	// Health and XIDs are the device plugin's view.
	Health gpudev.Health
	XIDs   map[uint64]uint64
	// Sample is valid only when SampleOK.
	Sample   gpudev.Sample
	SampleOK bool
	// Processes is valid only when ProcessesOK.
	Processes   []Process
	ProcessesOK bool
}

// Process is one process NVML listed on a GPU and where its cgroups place
// it.
type Process struct {
	gpudev.Process
	// Container is the pod or container its cgroups name; zero for a host
	// process or one that exited since NVML listed it.
	Container Cgroup
	// Conflict, when not empty, says how its cgroups name two containers
	// at once: only a process that writes cgroupfs outside its own
	// subtree can arrange that.
	Conflict string
}

// Input is one sample's readings and what they are read against.
type Input struct {
	// Time is when the sample was taken.
	Time time.Time
	// MaxGap caps the time integrated since the previous sample: a stalled
	// agent must not credit a long gap to whatever ran at its end.
	MaxGap time.Duration
	GPUs   []GPUReading
	// Assignments are the kubelet's, from pod-resources.
	Assignments []Assignment
	// Checkpoint is the kubelet's device manager checkpoint; nil when it
	// could not be read.
	Checkpoint []CheckpointEntry
	Layout     *vgpu.Layout
	// ResourceName is the resource whose slices are attributed.
	ResourceName string
	// Records are the runtime's records of the containers the GPU
	// processes' cgroups name, by container ID, as the sampler read them;
	// a container without one is placed by its pod alone.
	Records Records
	// DRA is what the DRA driver's claims hold (DRA).
	DRA DRA
	// Stale says which host files are the last copy read whole, not this
	// sample's (Stale).
	Stale Stale
}

// State is what the accounting carries from one sample to the next. The
// zero State is the agent's start.
type State struct {
	last   time.Time
	accums map[key]accum
	// groups are the pods held at their pod's level in the last sample,
	// kept while their GPU is blind.
	groups map[key]Container
}

// Problem is one input the accounting could not use.
type Problem struct {
	// Source is one of the Source constants.
	Source string
	Err    error
}

type key struct{ ns, pod, ctr, uuid string }

type accum struct {
	busy       float64
	lastActive time.Time
	cgroup     Cgroup // the last seen, kept while blind
}

// Build is the accounting of one sample: the devices, each container's use
// of each GPU it holds slices of (joined from its processes' cgroups, the
// runtime's records, the checkpoint and pod-resources), its GPU time
// integrated since the previous sample, and the processes that are
// unattributed or unauthorized. It returns the snapshot (without Errors and
// Durations, which the sampler counts), the state for the next sample, and
// the inputs it had to leave out.
func Build(in Input, prev State) (*Snapshot, State, []Problem) {
	snap := &Snapshot{Time: in.Time, Stale: in.Stale}
	procs, usage, conflicts := readDevices(in, snap)
	joined := Join(procs, in.Assignments, in.Checkpoint, in.ResourceName, in.Records, in.DRA, in.Stale)
	snap.Unattributed = joined.Unattributed
	snap.Unauthorized = append(conflicts, joined.Unauthorized...) //nolint:gocritic // conflicts is ours to extend

	entries, allocated, problems := holdings(in, joined.Attributed)
	for _, a := range joined.Attributed {
		e := entries[key{a.Assignment.Namespace, a.Assignment.Pod, a.Assignment.Container, a.UUID}]
		if e == nil {
			continue
		}
		p := usage[gpuPID{a.UUID, a.PID}]
		e.MemoryUsedBytes += p.MemoryBytes
		e.SMUtilization += p.SMUtilization
		e.Processes++
		e.Procs = append(e.Procs, p)
		// A process charged by its pod (in the pod's own cgroup, or in a
		// container the runtime did not name, which may be a sidecar) is
		// held at the pod's level: only the pod's cgroup contains them
		// all, and freezing an unnamed container could freeze a decoy.
		switch {
		case a.By == ByPod:
			e.Cgroup = a.Container.Pod()
		case e.Cgroup.Key() == "":
			e.Cgroup = a.Container
		}
	}
	groups := holdUnknown(entries, joined, usage)
	deviceCompute(snap.Devices, entries)
	var next State
	snap.Containers, next = accumulate(in, snap.Devices, entries, prev)
	snap.Groups, next.groups = carryGroups(snap.Devices, groups, prev.groups)
	for i, g := range snap.Groups {
		if d := deviceOf(snap.Devices, g.UUID); d != nil && d.PerProcessUnmeasured() {
			snap.Groups[i].ComputeUnmeasured, snap.Groups[i].SMUtilization = true, 0
		}
	}
	for i := range snap.Devices {
		snap.Devices[i].Allocated = allocated[snap.Devices[i].UUID]
	}
	return snap, next, problems
}

// holdUnknown holds at its pod's level every pod with a process on a GPU
// that could not be placed in one of its containers (an Unattributed
// process with a pod): each of the pod's containers holding the GPU is
// marked Unknown and given the pod's cgroup, and one group per pod and GPU
// carries the pod's total limits and the use of all its processes there.
// A pod that holds nothing of the GPU (as far as is known) gets no group:
// its process stays counted as unattributed.
func holdUnknown(entries map[key]*Container, joined Result, usage map[gpuPID]gpudev.Process) []Container {
	type podGPU struct{ uid, uuid string }
	unknown := map[podGPU][]Unattributed{}
	var order []podGPU
	for _, u := range joined.Unattributed {
		if u.PodUID == "" {
			continue
		}
		k := podGPU{u.PodUID, u.UUID}
		if unknown[k] == nil {
			order = append(order, k)
		}
		unknown[k] = append(unknown[k], u)
	}
	var groups []Container
	for _, k := range order {
		pod, ok := joined.Pods[k.uid]
		if !ok {
			continue
		}
		first := unknown[k][0]
		g := Container{Namespace: pod.Namespace, Pod: pod.Name, PodUID: k.uid, UUID: k.uuid, Unknown: first.Reason, Cgroup: first.Container.Pod()}
		members := 0
		for ek, e := range entries {
			if ek.ns != pod.Namespace || ek.pod != pod.Name || ek.uuid != k.uuid {
				continue
			}
			members++
			g.Index = e.Index
			g.Slices += e.Slices
			g.MemoryLimitBytes += e.MemoryLimitBytes
			g.ComputeLimitRatio += e.ComputeLimitRatio
			g.Procs = append(g.Procs, e.Procs...)
			e.Unknown, e.Cgroup = first.Reason, g.Cgroup
		}
		if members == 0 {
			continue
		}
		for _, u := range unknown[k] {
			g.Procs = append(g.Procs, usage[gpuPID{u.UUID, u.PID}])
		}
		for _, p := range g.Procs {
			g.MemoryUsedBytes += p.MemoryBytes
			g.SMUtilization += p.SMUtilization
		}
		g.SMUtilization = min(g.SMUtilization, 1)
		g.Processes = len(g.Procs)
		groups = append(groups, g)
	}
	return groups
}

// carryGroups returns the groups to publish and keep: on a blind GPU, the
// pod held at its pod's level in the last sample stays held (its use
// unknown), so that a sample that could not list processes lets nothing
// go.
func carryGroups(devices []Device, groups []Container, prev map[key]Container) ([]Container, map[key]Container) {
	next := map[key]Container{}
	for _, g := range groups {
		next[key{g.Namespace, g.Pod, "", g.UUID}] = g
	}
	for _, d := range devices {
		if !d.Blind() {
			continue
		}
		for k, g := range prev {
			if k.uuid == d.UUID {
				g.Blind, g.MemoryUsedBytes, g.SMUtilization, g.Procs, g.Processes = true, 0, 0, nil, 0
				next[k] = g
				groups = append(groups, g)
			}
		}
	}
	return groups, next
}

// deviceCompute gives the containers on a device whose driver measures no
// process (a MIG instance) their compute use: the device's own
// utilization (GPM) where one container alone holds the device, and
// unmeasured where the driver measures none or several containers hold
// it (the device's use cannot be split among them). Whatever else runs on
// the device is charged to its one holder, never left free: a process
// there that is not the holder's is unauthorized or unattributed, and
// counted as such.
func deviceCompute(devices []Device, entries map[key]*Container) {
	holders := map[string][]*Container{}
	for _, e := range entries {
		holders[e.UUID] = append(holders[e.UUID], e)
	}
	for _, d := range devices {
		if !d.PerProcessUnmeasured() {
			continue
		}
		hs := holders[d.UUID]
		for _, e := range hs {
			if len(hs) == 1 && !d.Sample.UtilizationUnsupported {
				e.SMUtilization = d.Sample.Utilization
				continue
			}
			e.ComputeUnmeasured, e.SMUtilization = true, 0
		}
	}
}

// deviceOf finds a device of the snapshot by UUID; nil when none.
func deviceOf(devices []Device, uuid string) *Device {
	for i := range devices {
		if devices[i].UUID == uuid {
			return &devices[i]
		}
	}
	return nil
}

type gpuPID struct {
	uuid string
	pid  int
}

// readDevices fills snap.Devices and returns the GPU processes to join,
// their use by GPU and PID, and the processes whose cgroups conflict.
func readDevices(in Input, snap *Snapshot) ([]GPUProcess, map[gpuPID]gpudev.Process, []Unauthorized) {
	var procs []GPUProcess
	var unauthorized []Unauthorized
	usage := map[gpuPID]gpudev.Process{}
	for _, r := range in.GPUs {
		dev := Device{Device: r.Device, Instance: r.Instance, Health: r.Health, XIDs: r.XIDs, Sample: r.Sample, SampleOK: r.SampleOK, ProcessesOK: r.ProcessesOK}
		if g, ok := in.Layout.GPU(r.Device.UUID); ok {
			dev.Slices = g.Slices
		}
		snap.Devices = append(snap.Devices, dev)
		if !r.ProcessesOK {
			continue
		}
		for _, p := range r.Processes {
			gp := GPUProcess{PID: p.PID, UUID: r.Device.UUID, Container: p.Container}
			if p.Conflict != "" {
				unauthorized = append(unauthorized, Unauthorized{GPUProcess: gp, Reason: p.Conflict})
				continue
			}
			procs = append(procs, gp)
			usage[gpuPID{r.Device.UUID, p.PID}] = p.Process
		}
	}
	return procs, usage, unauthorized
}

// holdings is one entry per container and GPU it holds slices of (or a
// DRA claim on), with or without processes, carrying the limits it was
// given (HoldingsOf); and the slices allocated of each GPU.
func holdings(in Input, attributed []Attributed) (map[key]*Container, map[string]int, []Problem) {
	podUID := map[[3]string]string{}
	for _, a := range attributed {
		podUID[[3]string{a.Assignment.Namespace, a.Assignment.Pod, a.Assignment.Container}] = a.PodUID
	}
	instances := map[string]gpudev.InForce{}
	for _, r := range in.GPUs {
		if r.Instance != nil {
			instances[r.Device.UUID] = *r.Instance
		}
	}
	h := HoldingsOf(Sources{
		Assignments: in.Assignments, Checkpoint: in.Checkpoint, ResourceName: in.ResourceName, Layout: in.Layout,
		DRA: in.DRA.Enabled, Prepared: in.DRA.Prepared, Instances: instances,
	})
	entries := make(map[key]*Container, len(h.Held))
	for _, x := range h.Held {
		entries[key{x.Namespace, x.Pod, x.Container, x.UUID}] = &Container{
			Namespace: x.Namespace, Pod: x.Pod, Container: x.Container,
			PodUID: podUID[[3]string{x.Namespace, x.Pod, x.Container}],
			UUID:   x.UUID, Index: x.Index, Slices: x.Slices, Claims: x.Claims,
			MemoryLimitBytes: x.MemoryBytes, ComputeLimitRatio: x.ComputeRatio,
		}
	}
	return entries, h.Allocated, h.Problems
}

// accumulate integrates each container's GPU time since the previous
// sample and returns the containers, sorted, and the next state. On a GPU
// whose use is unknown in this sample (blind) nothing is integrated and no
// zero is made up: a container keeps its totals and the cgroup last seen,
// so enforcement holds what it had.
func accumulate(in Input, devices []Device, entries map[key]*Container, prev State) ([]Container, State) {
	dt := min(in.Time.Sub(prev.last), in.MaxGap)
	if prev.last.IsZero() || dt < 0 {
		dt = 0
	}
	blind, read := map[string]bool{}, map[string]bool{}
	for _, d := range devices {
		read[d.UUID] = true
		if d.Blind() {
			blind[d.UUID] = true
		}
	}
	next := State{last: in.Time, accums: make(map[key]accum, len(entries))}
	out := make([]Container, 0, len(entries))
	for k, e := range entries {
		e.SMUtilization = min(e.SMUtilization, 1)
		acc := prev.accums[k]
		switch {
		case blind[e.UUID] || !read[e.UUID]:
			// A GPU not read at all (one in MIG mode, whose instances
			// the container holds; one lost) is as blind as one whose
			// reading failed: its use is unknown, never zero.
			e.Blind = true
			e.Cgroup = acc.cgroup
		case e.Unknown != "":
			// Its use cannot be told: nothing is integrated, and the
			// pod's cgroup holds it.
			acc.cgroup = e.Cgroup
		case e.ComputeUnmeasured:
			// Its memory is read; its compute cannot be, so nothing is
			// integrated and no zero made up.
			acc.cgroup = e.Cgroup
		default:
			acc.cgroup = e.Cgroup
			acc.busy += e.SMUtilization * dt.Seconds()
			if e.SMUtilization > 0 {
				acc.lastActive = in.Time
			}
		}
		e.BusySeconds, e.LastActive = acc.busy, acc.lastActive
		// A container that let go of the GPU is not carried: its series end.
		next.accums[k] = acc
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Pod != b.Pod {
			return a.Pod < b.Pod
		}
		if a.Container != b.Container {
			return a.Container < b.Container
		}
		if a.Index != b.Index {
			return a.Index < b.Index
		}
		return a.UUID < b.UUID // a GPU's MIG instances share its index
	})
	return out, next
}
