package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/gpuslice/gpuslice/test/cgrouptest"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
	"github.com/gpuslice/gpuslice/test/promtest"
)

const resource = "nvidia.com/vgpu"

// slicesPerGPU is how the agent cuts the GPU: limits are tenths.
const slicesPerGPU = 10

// proc is one workload process the check started.
type proc struct {
	cmd      *exec.Cmd
	progress string // file a real loop writes its count to
	done     chan struct{}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) kill() {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// backend is what differs between a real GPU and the dry run.
type backend interface {
	agentArgs() []string
	agentEnv() []string
	startLoop(cg string, env []string) (*proc, error)
	startHog(cg string, env []string, mib uint64) (*proc, error)
	// work is a loop's completed work in its own units (iterations; GPU
	// seconds served on the fake) and when, in seconds, it was counted.
	work(p *proc) (done, at float64, err error)
	// driverView is each process's GPU memory as the driver's own tool
	// reports it, and the tool's name.
	driverView(uuid string) (map[int]uint64, string, error)
	environment() []string
	close()
}

// scenario is one measured run of loops under strict limits.
type scenario struct {
	name   string
	slices []int
	rates  []float64 // work per second
	shares []float64 // against the solo rate
	agent  []float64 // the agent's own reading: busy seconds per second
	duty   []float64 // the throttle's duty at the end
	err    error
}

// attribution compares the agent's view of one container with the driver's.
type attribution struct {
	pod          string
	agent, truth uint64
}

// check holds the run's state and findings.
type check struct {
	ctx     context.Context
	o       options
	b       backend
	dir     string
	unified string // cgroup v2 mount
	base    string // this run's cgroups
	kubelet *kubeletstub.Kubelet
	podres  *kubeletstub.PodResources
	plugin  *kubeletstub.Plugin
	agent   *exec.Cmd
	agentOK chan struct{}
	addr    string
	uuid    string

	env       []string
	freezer   string
	solo      float64
	scenarios []scenario
	attrib    []attribution
	attribSrc string
	attribErr error
	hog       string
	tier      string
	failures  []string
}

func newCheck(ctx context.Context, o options) (*check, error) {
	dir, err := os.MkdirTemp("", "gpu-check")
	if err != nil {
		return nil, err
	}
	c := &check{ctx: ctx, o: o, dir: dir}
	for _, m := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(m, "cgroup.controllers")); err == nil {
			c.unified = m
			break
		}
	}
	if c.unified == "" {
		_ = os.RemoveAll(dir)
		return nil, errors.New("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
	}
	c.base = filepath.Join(c.unified, fmt.Sprintf("gpuslice-check-%d", os.Getpid()))
	if o.mode == "dry" {
		c.b, err = newDry(dir)
	} else {
		c.b, err = newReal(dir, o.python)
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

func (c *check) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.failures = append(c.failures, msg)
	fmt.Printf("gpu-check: FAIL %s\n", msg)
}

func (c *check) failed() bool { return len(c.failures) > 0 }

func (c *check) step(format string, args ...any) {
	fmt.Printf("gpu-check: %s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (c *check) runAll() {
	c.env = c.b.environment()
	c.step("cgroup freezer")
	c.freezer = c.checkFreezer()
	c.step("starting the kubelet stand-in and the agent")
	if err := c.startAgent(); err != nil {
		c.fail("agent: %v", err)
		return
	}
	c.step("solo rate")
	solo := c.runScenario("solo", []int{slicesPerGPU}, false)
	if solo.err != nil || len(solo.rates) != 1 || solo.rates[0] <= 0 {
		c.fail("solo run: %v", solo.err)
		return
	}
	c.solo = solo.rates[0]
	for _, sc := range []struct {
		name   string
		slices []int
	}{{"strict-30-70", []int{3, 7}}, {"strict-10-30-60", []int{1, 3, 6}}} {
		c.step("scenario %s", sc.name)
		r := c.runScenario(sc.name, sc.slices, sc.name == "strict-10-30-60")
		if r.err != nil {
			c.fail("scenario %s: %v", sc.name, r.err)
		}
		c.scenarios = append(c.scenarios, r)
	}
	c.step("memory hog")
	c.hog = c.runHog()
	c.tier = c.memoryTier()
}

// checkFreezer runs a CPU spinner in a cgroup and reports whether freezing
// the cgroup stops it.
func (c *check) checkFreezer() string {
	cg := filepath.Join(c.base, "freezer-check")
	if err := os.MkdirAll(cg, 0o750); err != nil {
		c.fail("create cgroup: %v", err)
		return "no: cannot create a cgroup: " + err.Error()
	}
	self, err := os.Executable()
	if err != nil {
		return "unknown: " + err.Error()
	}
	p, err := start(exec.Command(self, "exec", cg, self, "spin"))
	if err != nil {
		return "unknown: " + err.Error()
	}
	defer p.kill()
	time.Sleep(300 * time.Millisecond)
	cpu := func() float64 { return cpuSeconds(p.pid()) }
	a := cpu()
	time.Sleep(time.Second)
	running := cpu() - a
	if err := os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("1"), 0o600); err != nil {
		c.fail("freeze a cgroup: %v", err)
		return "no: " + err.Error()
	}
	time.Sleep(200 * time.Millisecond)
	b := cpu()
	time.Sleep(time.Second)
	frozen := cpu() - b
	_ = os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("0"), 0o600)
	if running <= 0 || frozen > 0.05*running {
		c.fail("freezing did not stop the spinner: %.2f s of CPU in 1 s running, %.2f s frozen", running, frozen)
		return fmt.Sprintf("no: %.2f s of CPU in 1 s running, %.2f s in 1 s frozen", running, frozen)
	}
	return fmt.Sprintf("yes: %.2f s of CPU in 1 s running, %.2f s in 1 s frozen", running, frozen)
}

// cpuSeconds is a process's user+system CPU time.
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100 // USER_HZ
}

func start(cmd *exec.Cmd) (*proc, error) {
	p := &proc{cmd: cmd, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (c *check) startAgent() error {
	k, err := kubeletstub.Start(c.dir)
	if err != nil {
		return err
	}
	c.kubelet = k
	sock := filepath.Join(c.dir, "pod-resources.sock")
	if c.podres, err = k.ServePodResources(sock); err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	c.addr = l.Addr().String()
	_ = l.Close()
	args := append([]string{
		"--device-plugin-dir=" + c.dir, "--pod-resources-socket=" + sock, "--metrics-address=" + c.addr,
		"--cgroup-root=/sys/fs/cgroup", "--slices-per-gpu=" + strconv.Itoa(slicesPerGPU), "--compute-policy=strict",
		"--enforcement-state=" + filepath.Join(c.dir, "enforcement.json"), "--unauthorized-gpu-use=log",
		"--node-labels=false", "--runtime-state-dirs=" + filepath.Join(c.dir, "no-runtime"),
	}, c.b.agentArgs()...)
	c.agent = exec.Command(c.o.agent, args...)
	c.agent.Env = append(os.Environ(), c.b.agentEnv()...)
	logf, err := os.Create(filepath.Join(c.dir, "agent.log"))
	if err != nil {
		return err
	}
	c.agent.Stdout, c.agent.Stderr = logf, logf
	if err := c.agent.Start(); err != nil {
		return err
	}
	c.agentOK = make(chan struct{})
	go func() { _ = c.agent.Wait(); _ = logf.Close(); close(c.agentOK) }()
	ctx, cancel := context.WithTimeout(c.ctx, 60*time.Second)
	defer cancel()
	if c.plugin, err = k.WaitPlugin(ctx, resource); err != nil {
		return fmt.Errorf("the agent never registered %s: %w\n%s", resource, err, c.agentLog())
	}
	return nil
}

// agentLog is the tail of the agent's log.
func (c *check) agentLog() string {
	data, _ := os.ReadFile(filepath.Join(c.dir, "agent.log"))
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// pod is one pod-shaped container: its allocation and cgroup.
type pod struct {
	name, cg string
	env      []string
	envs     map[string]string
}

func (c *check) admit(name string, slices int) (pod, error) {
	a, err := c.plugin.Allocate(c.ctx, name, "main", slices)
	if err != nil {
		return pod{}, fmt.Errorf("allocate %d slices to %s: %w", slices, name, err)
	}
	envs := a.Response.GetEnvs()
	p := pod{name: name, envs: envs}
	for k, v := range envs {
		p.env = append(p.env, k+"="+v)
	}
	if gpus := envs["NVIDIA_VISIBLE_DEVICES"]; gpus != "" {
		// No container runtime here to turn the device list into
		// devices: CUDA takes the UUIDs itself.
		p.env = append(p.env, "CUDA_VISIBLE_DEVICES="+gpus)
		c.uuid, _, _ = strings.Cut(gpus, ",")
	}
	cid := fmt.Sprintf("%x", sha256.Sum256([]byte(name)))
	p.cg = filepath.Join(c.base, "kubepods", "burstable", "pod"+kubeletstub.PodUID(name), cid)
	if err := os.MkdirAll(p.cg, 0o750); err != nil {
		return pod{}, err
	}
	return p, nil
}

func (c *check) evict(p pod, procs ...*proc) {
	for _, pr := range procs {
		if pr != nil {
			pr.kill()
		}
	}
	c.plugin.Release(p.name, "main")
	_ = cgrouptest.RemoveTree(filepath.Dir(p.cg), 5*time.Second) // best effort: the run goes on
}

// runScenario runs one greedy loop per entry of slices, settles, and
// measures each loop's completed work per second.
func (c *check) runScenario(name string, slices []int, attribute bool) scenario {
	r := scenario{name: name, slices: slices}
	var pods []pod
	var procs []*proc
	defer func() {
		for i := range pods {
			c.evict(pods[i], procs[i])
		}
	}()
	for i, n := range slices {
		p, err := c.admit(fmt.Sprintf("check/%s-%d", name, i), n)
		if err != nil {
			r.err = err
			return r
		}
		pr, err := c.b.startLoop(p.cg, append(os.Environ(), p.env...))
		pods = append(pods, p)
		procs = append(procs, pr)
		if err != nil {
			r.err = err
			return r
		}
	}
	if !sleep(c.ctx, c.o.settle) {
		r.err = c.ctx.Err()
		return r
	}
	if r.err = c.measure(&r, pods, procs); r.err == nil && attribute {
		c.attribute(pods, procs)
	}
	return r
}

// measure fills r with each loop's completed work per second over the
// measured span, beside the agent's reading and duty for its pod.
func (c *check) measure(r *scenario, pods []pod, procs []*proc) error {
	busy := func(mfs map[string]*dto.MetricFamily, name, p string) float64 {
		ns, pod, _ := strings.Cut(p, "/")
		v, _ := promtest.Value(mfs, name, map[string]string{"namespace": ns, "pod": pod, "container": "main"})
		return v
	}
	m0, err := promtest.Fetch("http://" + c.addr + "/metrics")
	if err != nil {
		return err
	}
	t0 := time.Now()
	before := make([][2]float64, len(procs))
	for i, p := range procs {
		d, at, err := c.b.work(p)
		if err != nil {
			return err
		}
		before[i] = [2]float64{d, at}
	}
	if !sleep(c.ctx, c.o.measure) {
		return c.ctx.Err()
	}
	m1, err := promtest.Fetch("http://" + c.addr + "/metrics")
	if err != nil {
		return err
	}
	span := time.Since(t0).Seconds()
	for _, p := range pods {
		r.agent = append(r.agent, (busy(m1, "gpuslice_container_gpu_busy_seconds_total", p.name)-busy(m0, "gpuslice_container_gpu_busy_seconds_total", p.name))/span)
		r.duty = append(r.duty, busy(m1, "gpuslice_enforcement_compute_duty_ratio", p.name))
	}
	for i, p := range procs {
		if p.exited() {
			return fmt.Errorf("loop %d exited: %v", i, p.cmd.ProcessState)
		}
		d, at, err := c.b.work(p)
		if err != nil {
			return err
		}
		rate := 0.0
		if at > before[i][1] {
			rate = (d - before[i][0]) / (at - before[i][1])
		}
		r.rates = append(r.rates, rate)
		if c.solo > 0 {
			r.shares = append(r.shares, rate/c.solo)
		}
	}
	return nil
}

// attribute compares the agent's per-container GPU memory with the
// driver's per-process view of the same processes.
func (c *check) attribute(pods []pod, procs []*proc) {
	view, src, err := c.b.driverView(c.uuid)
	c.attribSrc = src
	if err != nil {
		c.attribErr = err
		return
	}
	mfs, err := promtest.Fetch("http://" + c.addr + "/metrics")
	if err != nil {
		c.attribErr = err
		return
	}
	for i, p := range pods {
		ns, name, _ := strings.Cut(p.name, "/")
		agent, _ := promtest.Value(mfs, "gpuslice_container_memory_used_bytes", map[string]string{"namespace": ns, "pod": name, "container": "main"})
		c.attrib = append(c.attrib, attribution{pod: p.name, agent: uint64(agent), truth: view[procs[i].pid()]})
	}
}

// runHog starts a process that grows past its slice's memory and reports
// what stopped it.
func (c *check) runHog() string {
	p, err := c.admit("check/hog", 1)
	if err != nil {
		c.fail("hog: %v", err)
		return "not run: " + err.Error()
	}
	limit, _ := strconv.ParseUint(p.envs["GPUSLICE_MEMORY_LIMIT_BYTES"], 10, 64)
	if limit == 0 {
		c.evict(p)
		c.fail("hog: no GPUSLICE_MEMORY_LIMIT_BYTES in the allocation")
		return "not run: no memory limit in the allocation"
	}
	want := 2 * limit >> 20
	start := time.Now()
	pr, err := c.b.startHog(p.cg, append(os.Environ(), p.env...), want)
	if err != nil {
		c.evict(p)
		c.fail("hog: %v", err)
		return "not run: " + err.Error()
	}
	defer c.evict(p, pr)
	select {
	case <-pr.done:
	case <-time.After(60 * time.Second):
		c.fail("the memory hog (limit %d MiB, asking %d MiB) was still running after 60 s", limit>>20, want)
		return fmt.Sprintf("NOT stopped: limit %d MiB, asking %d MiB, still running after 60 s", limit>>20, want)
	case <-c.ctx.Done():
		return "not finished: " + c.ctx.Err().Error()
	}
	took := time.Since(start).Round(100 * time.Millisecond)
	st := pr.cmd.ProcessState
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("stopped by signal %d (%s) after %s (limit %d MiB, asking %d MiB): the watchdog", int(ws.Signal()), ws.Signal(), took, limit>>20, want)
	}
	return fmt.Sprintf("exited with status %d after %s (limit %d MiB, asking %d MiB): refused an allocation (the driver tier) or failed on its own", st.ExitCode(), took, limit>>20, want)
}

// memoryTier is the tier the agent reports holding memory on the GPU.
func (c *check) memoryTier() string {
	mfs, err := promtest.Fetch("http://" + c.addr + "/metrics")
	if err != nil {
		return "unknown: " + err.Error()
	}
	f := mfs["gpuslice_enforcement_tier"]
	if f == nil {
		return "unknown: no gpuslice_enforcement_tier series"
	}
	var tiers []string
	for _, m := range f.GetMetric() {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		if l["resource"] == "memory" {
			tiers = append(tiers, l["tier"])
		}
	}
	if len(tiers) == 0 {
		return "unknown: no memory tier reported"
	}
	return strings.Join(tiers, ", ")
}

func (c *check) close() {
	if c.agent != nil && c.agent.Process != nil {
		_ = c.agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.agentOK:
		case <-time.After(10 * time.Second):
			_ = c.agent.Process.Kill()
			<-c.agentOK
		}
	}
	if c.podres != nil {
		c.podres.Stop()
	}
	if c.kubelet != nil {
		c.kubelet.Stop()
	}
	c.b.close()
	if err := cgrouptest.RemoveTree(c.base, 5*time.Second); err != nil {
		fmt.Printf("gpu-check: %v\n", err)
	}
	_ = os.RemoveAll(c.dir)
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
