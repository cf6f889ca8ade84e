package enforce_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/pkg/host"
	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// driverNode is a fake node whose driver has per-cgroup memory limits,
// with the driver tier watching a cgroup tree of the test's own.
type driverNode struct {
	node   *kubeletstub.Node
	limits *enforce.DriverLimits
	base   string // the test's top-level cgroup, in the v2 hierarchy
	work   string
	bin    string
	// runtime is a state dir where the test writes containers' OCI
	// bundles as containerd does, before their cgroups exist.
	runtime string
	// kubelet holds the kubelet's DRA checkpoint; record is the DRA
	// driver's record of prepared claims.
	kubelet, record string
}

// bundle records a container as containerd does before creating its
// cgroup: sandbox true for the pod's pause container.
func (n *driverNode) bundle(t testing.TB, pod, name, cid string, sandbox bool) {
	t.Helper()
	typ := "container"
	if sandbox {
		typ = "sandbox"
	}
	ns, podName, _ := strings.Cut(pod, "/")
	data := fmt.Sprintf(`{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":%q,"io.kubernetes.cri.container-name":%q,`+
		`"io.kubernetes.cri.sandbox-uid":%q,"io.kubernetes.cri.sandbox-name":%q,"io.kubernetes.cri.sandbox-namespace":%q}}`,
		typ, name, kubeletstub.PodUID(pod), podName, ns)
	if err := os.MkdirAll(filepath.Join(n.runtime, cid), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.runtime, cid, "config.json"), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func startDriverNode(t testing.TB) *driverNode {
	t.Helper()
	return startDriverNodeSliced(t, 0)
}

// startDriverNodeSliced is startDriverNode with the agent cutting each GPU
// into agentSlices (the kubelet's device plugin cut them into 10): the
// node's slicing changed under running pods. 0 keeps 10.
func startDriverNodeSliced(t testing.TB, agentSlices int) *driverNode {
	t.Helper()
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err != nil {
		if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
			cgrouptest.Skip(t, "no cgroup v2 hierarchy on this host")
		}
	}
	work := t.TempDir()
	node := kubeletstub.StartNode(t, fakegpu.Config{Preset: "H100-80GB", Count: 1, WorkloadDir: work, DriverMemoryLimits: true}, 10)
	bin, err := fakegpu.BuildWorkload(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	root, err := host.CgroupV2Root("/sys/fs/cgroup")
	if err != nil {
		cgrouptest.Skip(t, "%v", err)
	}
	base := filepath.Join(root, fmt.Sprintf("gpuslice-driver-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	t.Cleanup(func() { removeTree(t, base) })
	runtime := t.TempDir()
	// As the agent wires it in --dra mode: slices from the device
	// manager's checkpoint, claims from pod-resources and the record.
	o := podresources.DefaultOptions()
	o.Socket, o.DRADriver = node.PodResourcesSocket, contract.DRADriverName
	client, err := podresources.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	kubelet := t.TempDir()
	record := filepath.Join(kubelet, "dra-prepared.json")
	layout := node.Layout
	if agentSlices > 0 {
		if layout, err = deviceplugin.NewLayout(node.Devices, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: agentSlices}}); err != nil {
			t.Fatal(err)
		}
	}
	d, err := enforce.NewDriverLimits(enforce.DriverOptions{
		Limiter:    node.GPU,
		CgroupRoot: "/sys/fs/cgroup",
		Holdings: kubeletstate.NewPods(kubeletstate.Options{
			PluginDir: node.Dir, ResourceName: "nvidia.com/vgpu", Layout: layout,
			Assignments: client, DRA: true, PreparedClaims: record,
		}).Holdings,
		Names: host.NewRuntimeState([]string{runtime}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("driver limits: %v", err)
		}
	})
	// The watch is in place once Run has added the root; give it a moment.
	time.Sleep(50 * time.Millisecond)
	return &driverNode{node: node, limits: d, base: base, work: work, bin: bin, runtime: runtime, kubelet: kubelet, record: record}
}

// containerCgroup creates the cgroup a runtime would create for a
// container of pod.
func (n *driverNode) containerCgroup(t testing.TB, pod, cid string) string {
	t.Helper()
	dir := filepath.Join(n.base, "kubepods", "burstable", "pod"+kubeletstub.PodUID(pod), cid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		cgrouptest.Skip(t, "cannot create cgroups: %v", err)
	}
	return dir
}

// waitLimit waits until the driver reports the cgroup's hard limit as want.
func (n *driverNode) waitLimit(t testing.TB, dir string, want uint64) time.Duration {
	t.Helper()
	start := time.Now()
	gpu := n.node.Devices[0].UUID
	for {
		l, err := n.node.GPU.MemoryLimits(gpu, dir)
		if err != nil {
			t.Fatal(err)
		}
		if l.HardBytes == want && (want == nvml.NoMemoryLimit || l.SoftBytes == want) {
			return time.Since(start)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("limits of %s are %+v, want hard %d", dir, l, want)
		}
		time.Sleep(time.Millisecond)
	}
}

type workloadRun struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan struct{} // closed when the process has ended
	err    error         // its Wait error, once done is closed
}

// run starts a workload holding mib in the cgroup dir. A shell moves
// itself into the cgroup, then becomes the workload, so the process is in
// the container's cgroup before it allocates, as with a runtime.
func (n *driverNode) run(t *testing.T, dir string, mib int, extra ...string) *workloadRun {
	t.Helper()
	r := &workloadRun{stderr: &bytes.Buffer{}, done: make(chan struct{})}
	args := append([]string{"--dir", n.work, "--gpu", n.node.Devices[0].UUID, "--demand", "0.05", "--memory-mib", fmt.Sprint(mib), "--tick", "5ms"}, extra...)
	sh := append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir, n.bin}, args...)
	r.cmd = exec.Command("/bin/sh", sh...)
	r.cmd.Stderr = r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() { _ = r.cmd.Process.Signal(syscall.SIGKILL); <-r.done })
	return r
}

// waitUsed waits until the fake driver has granted the cgroup want bytes.
func (n *driverNode) waitUsed(t *testing.T, dir string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := n.node.GPU.MemoryLimits(n.node.Devices[0].UUID, dir)
		if err == nil && l.UsedBytes == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cgroup holds %+v, %v; want %d bytes used", l, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDriverLimitsSetOnCgroupCreationAndRefuseOverLimit(t *testing.T) {
	n := startDriverNode(t)
	if _, err := n.node.Connection.Allocate(context.Background(), "ml/train", "main", 2); err != nil {
		t.Fatal(err)
	}
	limit := 2 * n.node.Layout.GPUs()[0].SliceMemoryBytes
	n.bundle(t, "ml/train", "main", strings.Repeat("a", 64), false)
	dir := n.containerCgroup(t, "ml/train", strings.Repeat("a", 64))
	took := n.waitLimit(t, dir, limit)
	t.Logf("limit set %v after the cgroup appeared", took)

	// Within the limit: runs. Past it with a second process: refused with
	// out-of-memory, while the first keeps running.
	half := int(limit>>20) / 2
	first := n.run(t, dir, half)
	n.waitUsed(t, dir, uint64(half)<<20) // the first allocates first
	second := n.run(t, dir, half+64)
	// The fake driver decides allocations whenever it accounts, which any
	// NVML call makes it do, as the agent's sampler does every second.
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-second.done:
			var exit *exec.ExitError
			if !errors.As(second.err, &exit) || !strings.Contains(second.stderr.String(), "out of memory") {
				t.Fatalf("second workload: %v, stderr %q; want an out-of-memory failure", second.err, second.stderr)
			}
			t.Logf("refused: %s", strings.TrimSpace(second.stderr.String()))
			break wait
		case <-tick.C:
			n.node.GPU.Processes(n.node.Devices[0].UUID) //nolint:errcheck // advance the fake's accounting
		case <-deadline:
			t.Fatal("an allocation past the cgroup's hard limit was not refused")
		}
	}
	select {
	case <-first.done:
		t.Fatalf("the workload within the limit ended: %v: %s", first.err, first.stderr)
	default:
	}
	n.waitUsed(t, dir, uint64(half)<<20)

	// The container ends: its soft limit is cleared before the runtime
	// removes the cgroup, so no reservation leaks.
	_ = first.cmd.Process.Signal(syscall.SIGKILL)
	<-first.done
	took = n.waitLimit(t, dir, nvml.NoMemoryLimit)
	t.Logf("limit cleared %v after the container's last process ended", took)
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if leaked := n.node.GPU.LeakedSoftBytes(); leaked != 0 {
		t.Errorf("%d bytes of soft limit leaked", leaked)
	}
	st := n.limits.Stats()
	if st.Set != 1 || st.Cleared != 1 || st.Failed != 0 || st.Uncleared != 0 {
		t.Errorf("stats %+v, want one set and one cleared", st)
	}
}

// TestDriverLimitsHonourGrantsAfterRelayout: the node's slicing changed
// (helm upgrade of slicesPerGPU from 10 to 4) while a pod holding 2 of 10
// slices runs, and its container is (re)started. Its driver limit is what
// Allocate gave it (the grant the kubelet checkpointed, 2 x 8 GiB-ish),
// as the per-sample pass (node.LimitsFor) holds it, never its slice IDs
// read in the new layout they were not cut from.
func TestDriverLimitsHonourGrantsAfterRelayout(t *testing.T) {
	n := startDriverNodeSliced(t, 4)
	if _, err := n.node.Connection.Allocate(context.Background(), "ml/train", "main", 2); err != nil {
		t.Fatal(err)
	}
	granted := 2 * n.node.Layout.GPUs()[0].SliceMemoryBytes
	n.bundle(t, "ml/train", "main", strings.Repeat("a", 64), false)
	dir := n.containerCgroup(t, "ml/train", strings.Repeat("a", 64))
	n.waitLimit(t, dir, granted)
}

// TestDriverLimitsOnlyOnContainersHoldingSlices is the triple
// reservation attack: a pod's sandbox, its init container and a sidecar
// holding no slices must get no limit (a limit reserves memory on a dmem
// driver); each container holding slices gets its own.
func TestDriverLimitsOnlyOnContainersHoldingSlices(t *testing.T) {
	n := startDriverNode(t)
	ctx := context.Background()
	for _, c := range []string{"a", "bb"} {
		if _, err := n.node.Connection.Allocate(ctx, "ml/two", c, len(c)); err != nil {
			t.Fatal(err)
		}
	}
	slice := n.node.Layout.GPUs()[0].SliceMemoryBytes
	gpu := n.node.Devices[0].UUID
	created := map[string]string{}
	for _, c := range []struct {
		name, cid string
		sandbox   bool
	}{
		{"", strings.Repeat("0", 64), true},
		{"init", strings.Repeat("1", 64), false},
		{"logger", strings.Repeat("2", 64), false},
		{"a", strings.Repeat("a", 64), false},
		{"bb", strings.Repeat("b", 64), false},
	} {
		n.bundle(t, "ml/two", c.name, c.cid, c.sandbox)
		created[c.cid] = n.containerCgroup(t, "ml/two", c.cid)
	}
	n.waitLimit(t, created[strings.Repeat("a", 64)], slice)
	n.waitLimit(t, created[strings.Repeat("b", 64)], 2*slice)
	for _, cid := range []string{strings.Repeat("0", 64), strings.Repeat("1", 64), strings.Repeat("2", 64)} {
		if l, err := n.node.GPU.MemoryLimits(gpu, created[cid]); err != nil || l.HardBytes != nvml.NoMemoryLimit || l.SoftBytes != 0 {
			t.Errorf("container %s…: limits %+v, %v; want none", cid[:4], l, err)
		}
	}
	if st := n.limits.Stats(); st.Set != 2 {
		t.Errorf("stats %+v, want two limits set", st)
	}
}

// TestDriverLimitsForClaims: containers holding DRA claims get the
// driver's memory limit the moment their cgroup appears, as containers
// holding slices do: a claim's memory, split between the containers that
// share it; a sidecar of the same pod that references no claim gets none.
// An allocation past the limit fails with out-of-memory in the container.
// The node has no device-manager checkpoint (a DRA-only node): that is no
// reason to set nothing.
func TestDriverLimitsForClaims(t *testing.T) {
	n := startDriverNode(t)
	gpu := n.node.Layout.GPUs()[0]
	claims := []kubeletstub.DRAClaim{
		{UID: "22222222-aaaa-4000-8000-000000000001", Namespace: "ml", Name: "three", Pods: map[string][]string{"ml/dra": {"main"}}},
		{UID: "22222222-aaaa-4000-8000-000000000002", Namespace: "ml", Name: "shared", Pods: map[string][]string{"ml/pair": {"a", "b"}}},
	}
	record := contract.PreparedClaims{Version: contract.PreparedClaimsVersion, Claims: map[string]contract.PreparedClaim{}}
	for i, c := range claims {
		k := 3 - i // three slices, then two
		record.Claims[c.UID] = contract.PreparedClaim{Namespace: c.Namespace, Name: c.Name, Grants: []contract.ClaimGrant{{
			UUID: gpu.UUID, Index: gpu.Index, Slices: k, SlicesTotal: gpu.Slices, ComputeRatio: float64(k) / float64(gpu.Slices),
			MemoryBytes: uint64(k) * gpu.SliceMemoryBytes, MemoryCapacity: gpu.MemoryBytes,
		}}}
	}
	data, err := json.Marshal(record)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.record, data, 0o600); err != nil {
		t.Fatal(err)
	}
	n.node.PodResources.SetExtraPods(kubeletstub.DRAPods(claims, map[string][]string{"ml/dra": {"main", "sidecar"}, "ml/pair": {"a", "b"}}))
	dirs := map[string]string{}
	for _, c := range []struct{ pod, name, cid string }{
		{"ml/dra", "main", strings.Repeat("c", 64)},
		{"ml/dra", "sidecar", strings.Repeat("d", 64)},
		{"ml/pair", "a", strings.Repeat("e", 64)},
		{"ml/pair", "b", strings.Repeat("f", 64)},
	} {
		n.bundle(t, c.pod, c.name, c.cid, false)
		dirs[c.name] = n.containerCgroup(t, c.pod, c.cid)
	}
	limit := 3 * gpu.SliceMemoryBytes
	took := n.waitLimit(t, dirs["main"], limit)
	t.Logf("claim holder's limit set %v after its cgroup appeared", took)
	n.waitLimit(t, dirs["a"], gpu.SliceMemoryBytes) // half of the shared claim's two slices each
	n.waitLimit(t, dirs["b"], gpu.SliceMemoryBytes)
	if l, err := n.node.GPU.MemoryLimits(gpu.UUID, dirs["sidecar"]); err != nil || l.HardBytes != nvml.NoMemoryLimit {
		t.Errorf("the sidecar referencing no claim: limits %+v, %v; want none", l, err)
	}
	over := n.run(t, dirs["main"], int(limit>>20)+64)
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-over.done:
			if !strings.Contains(over.stderr.String(), "out of memory") {
				t.Fatalf("past its claim's memory: %v, stderr %q; want out of memory", over.err, over.stderr)
			}
			return
		case <-tick.C:
			n.node.GPU.Processes(gpu.UUID) //nolint:errcheck // advance the fake's accounting
		case <-deadline:
			t.Fatal("an allocation past the claim's memory was not refused")
		}
	}
}

// TestDriverLimitsWaitForProcessesWithoutRuntimeRecord: a container the
// runtime's state does not name gets its limit from the per-sample pass,
// once its processes are attributed, never by a guess at creation.
func TestDriverLimitsWaitForProcessesWithoutRuntimeRecord(t *testing.T) {
	n := startDriverNode(t)
	if _, err := n.node.Connection.Allocate(context.Background(), "ml/one", "a", 1); err != nil {
		t.Fatal(err)
	}
	dir := n.containerCgroup(t, "ml/one", strings.Repeat("b", 64))
	time.Sleep(100 * time.Millisecond)
	gpu := n.node.Devices[0].UUID
	if l, err := n.node.GPU.MemoryLimits(gpu, dir); err != nil || l.HardBytes != nvml.NoMemoryLimit {
		t.Fatalf("limits %+v, %v: nothing says what this cgroup is", l, err)
	}
	rel, _ := filepath.Rel(n.limits.Root(), dir)
	c, _ := host.ParseCgroupPath("/" + rel)
	want := n.node.Layout.GPUs()[0].SliceMemoryBytes
	n.limits.Apply(&node.Snapshot{Containers: []node.Container{{Namespace: "ml", Pod: "one", Container: "a", UUID: gpu, MemoryLimitBytes: want, Cgroup: c}}})
	n.waitLimit(t, dir, want)
	if got := n.limits.Limits()[c.ContainerID][gpu]; got != want {
		t.Errorf("Limits() = %d for the container, want %d", got, want)
	}
}

func TestDriverLimitsUnsupported(t *testing.T) {
	fake, err := fakegpu.New(fakegpu.Config{Preset: "A100-40GB", Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = enforce.NewDriverLimits(enforce.DriverOptions{Limiter: fake, CgroupRoot: "/sys/fs/cgroup", Holdings: func(context.Context, events.Pod) ([]node.Holding, error) { return nil, nil }})
	if !errors.Is(err, nvml.ErrNotSupported) && !errors.Is(err, host.ErrNoCgroupV2) {
		t.Fatalf("err = %v, want not supported", err)
	}
	_, err = enforce.NewDriverLimits(enforce.DriverOptions{Limiter: fake, CgroupRoot: t.TempDir(), Holdings: func(context.Context, events.Pod) ([]node.Holding, error) { return nil, nil }})
	if !errors.Is(err, host.ErrNoCgroupV2) {
		t.Fatalf("err = %v, want no cgroup v2", err)
	}
}

func TestDriverLimitsCgroupRemovedWhileLimitedIsCounted(t *testing.T) {
	n := startDriverNode(t)
	if _, err := n.node.Connection.Allocate(context.Background(), "ml/gone", "main", 1); err != nil {
		t.Fatal(err)
	}
	n.bundle(t, "ml/gone", "main", strings.Repeat("c", 64), false)
	dir := n.containerCgroup(t, "ml/gone", strings.Repeat("c", 64))
	n.waitLimit(t, dir, n.node.Layout.GPUs()[0].SliceMemoryBytes)
	// Removed without ever being populated: no chance to clear first.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n.limits.Stats().Uncleared != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want one uncleared cgroup", n.limits.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(n.limits.Limits()) != 0 {
		t.Errorf("limits still tracked for a removed cgroup: %v", n.limits.Limits())
	}
	if leaked := n.node.GPU.LeakedSoftBytes(); leaked != n.node.Layout.GPUs()[0].SliceMemoryBytes {
		t.Errorf("the fake driver leaked %d bytes, want one slice", leaked)
	}
}

// BenchmarkDriverLimitOnCgroupCreation measures the time from a container
// cgroup's mkdir to its driver limit being in force (fake driver), taken
// from when the fake driver was called, not when the 1 ms poll saw it.
func BenchmarkDriverLimitOnCgroupCreation(b *testing.B) {
	n := startDriverNode(b)
	if _, err := n.node.Connection.Allocate(context.Background(), "ml/bench", "main", 1); err != nil {
		b.Fatal(err)
	}
	want := n.node.Layout.GPUs()[0].SliceMemoryBytes
	var took []time.Duration
	for i := 0; b.Loop(); i++ {
		n.bundle(b, "ml/bench", "main", fmt.Sprintf("%064x", i+1), false)
		start := time.Now()
		dir := n.containerCgroup(b, "ml/bench", fmt.Sprintf("%064x", i+1))
		n.waitLimit(b, dir, want)
		took = append(took, n.node.GPU.LimitSetAt(n.node.Devices[0].UUID, dir).Sub(start))
		if err := os.Remove(dir); err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(took[len(took)-1].Microseconds()), "max-us")
}

// TestMissingCheckpointIsUnknownToEveryTier: the review found the kubelet's
// device-manager checkpoint, when missing, meant "nothing held" to the
// driver tier (no limits to set) and "cannot tell" to unauthorized-use
// detection (nothing judged). It has one meaning now: cannot tell. The
// kubelet writes it once its device manager runs, so a missing one is a
// wrong --device-plugin-dir or a kubelet not started: the driver tier
// reports it and waits (the watchdog holds memory meanwhile), as the
// sampler reports it and judges nothing.
func TestMissingCheckpointIsUnknownToEveryTier(t *testing.T) {
	t.Parallel()
	node := kubeletstub.StartNode(t, fakegpu.Config{Preset: "A100-40GB", Count: 1}, 4)
	pods := func(dir string) *kubeletstate.Pods {
		return kubeletstate.NewPods(kubeletstate.Options{PluginDir: dir, ResourceName: "nvidia.com/vgpu", Layout: node.Layout})
	}
	ctx := context.Background()
	if h, err := pods(t.TempDir()).Holdings(ctx, events.Pod{Namespace: "ml", Name: "a", UID: "uid-a"}); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("holdings with no checkpoint = %v, %v; want an error saying it is missing", h, err)
	}
	// Where it exists, a pod holding nothing holds nothing, and no error.
	if h, err := pods(node.Dir).Holdings(ctx, events.Pod{UID: "nobody"}); err != nil || len(h) != 0 {
		t.Errorf("holdings of a pod holding nothing = %v, %v", h, err)
	}
}

// TestDriverLimitsNotOnMIGInstances: a claim on a MIG instance is held
// by the hardware, and the driver's per-cgroup limits do not support MIG:
// the tier sets none for it, and neither fails nor warns about it on every
// new container (it did: a failed limit, a log line and an Event each
// time). A container holding a share of a whole GPU, created after it,
// still gets its limit.
func TestDriverLimitsNotOnMIGInstances(t *testing.T) {
	n := startDriverNode(t)
	gpu := n.node.Layout.GPUs()[0]
	claims := []kubeletstub.DRAClaim{
		{UID: "33333333-aaaa-4000-8000-000000000001", Namespace: "ml", Name: "mig", Pods: map[string][]string{"ml/mig": {"main"}}},
		{UID: "33333333-aaaa-4000-8000-000000000002", Namespace: "ml", Name: "share", Pods: map[string][]string{"ml/share": {"main"}}},
	}
	record := contract.PreparedClaims{Version: contract.PreparedClaimsVersion, Claims: map[string]contract.PreparedClaim{
		claims[0].UID: {Namespace: "ml", Name: "mig", Grants: []contract.ClaimGrant{{
			UUID: "MIG-00000000-1111-2222-3333-444444444444", Parent: gpu.UUID, MIGProfile: "1g.10gb", Index: gpu.Index,
			Slices: 1, SlicesTotal: 1, ComputeRatio: 1, MemoryBytes: 10 << 30, MemoryCapacity: 10 << 30, Whole: true,
		}}},
		claims[1].UID: {Namespace: "ml", Name: "share", Grants: []contract.ClaimGrant{{
			UUID: gpu.UUID, Index: gpu.Index, Slices: 1, SlicesTotal: gpu.Slices, ComputeRatio: 1 / float64(gpu.Slices),
			MemoryBytes: gpu.SliceMemoryBytes, MemoryCapacity: gpu.MemoryBytes,
		}}},
	}}
	data, err := json.Marshal(record)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.record, data, 0o600); err != nil {
		t.Fatal(err)
	}
	n.node.PodResources.SetExtraPods(kubeletstub.DRAPods(claims, map[string][]string{"ml/mig": {"main"}, "ml/share": {"main"}}))
	n.bundle(t, "ml/mig", "main", strings.Repeat("a", 64), false)
	n.containerCgroup(t, "ml/mig", strings.Repeat("a", 64))
	n.bundle(t, "ml/share", "main", strings.Repeat("b", 64), false)
	share := n.containerCgroup(t, "ml/share", strings.Repeat("b", 64))
	n.waitLimit(t, share, gpu.SliceMemoryBytes)
	if st := n.limits.Stats(); st.Failed != 0 || st.Set != 1 {
		t.Errorf("driver tier stats %+v: want the share's limit set and nothing tried on the MIG instance", st)
	}
}
