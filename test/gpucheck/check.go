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
	"sort"
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

// slicesPerGPU is how the agent cuts the GPU: limits are twentieths, so
// 10/30/60, 30/70 and 4 × 25 % are all whole slices.
const slicesPerGPU = 20

// windows is how many times each scenario is measured, one window after
// another once it has settled.
const windows = 3

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
	// startLatency starts the latency victim: a small inference-style
	// loop, idle between steps, that records each step's duration.
	startLatency(cg string, env []string) (*proc, error)
	// steps is every step duration (seconds) the victim has recorded.
	steps(p *proc) ([]float64, error)
	// startMPS starts an MPS control daemon and returns the environment
	// that points clients at it and how to stop it; an error where the
	// machine does not allow it.
	startMPS() (env []string, stop func(), err error)
	// mig says whether the GPU is in MIG mode, read without changing it.
	mig() string
	environment() []string
	close()
}

// loopSpec is one workload of a scenario: a pod holding slices (0: a
// process outside every pod, which the agent never throttles), running the
// saturating loop or the latency victim.
type loopSpec struct {
	slices  int
	latency bool
}

// scenario is one measured run of workloads under one policy.
type scenario struct {
	name   string
	policy string // the agent's compute policy while it ran
	loops  []loopSpec
	// rates is each loop's completed work per second in each window;
	// raw, its work counted each second over every window.
	rates, raw [][]float64
	// steps are the latency victim's step durations over the windows.
	steps [][]float64
	agent []float64 // the agent's own reading: busy seconds per second
	duty  []float64 // the throttle's duty at the end
	err   error
}

// mean, low and high of a loop's windows.
func (s scenario) stats(i int) (mean, lo, hi float64) {
	if i >= len(s.rates) || len(s.rates[i]) == 0 {
		return 0, 0, 0
	}
	lo, hi = s.rates[i][0], s.rates[i][0]
	for _, r := range s.rates[i] {
		mean += r
		lo, hi = min(lo, r), max(hi, r)
	}
	return mean / float64(len(s.rates[i])), lo, hi
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
	policy    string // the running agent's compute policy
	baseline  float64
	solo      float64
	scenarios []scenario
	latency   []scenario
	burst     *scenario
	mps       string // why the MPS case did not run, if it did not
	migMode   string
	offered   string // the resources the agent registered, with their devices
	driverLog string // what the agent said of the driver's memory limits
	attrib    []attribution
	attribSrc string
	attribErr error
	extraEnv  []string // every workload's extra environment (MPS)
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
	c.migMode = c.b.mig()
	c.step("cgroup freezer")
	c.freezer = c.checkFreezer()
	c.step("starting the kubelet stand-in and the agent (strict)")
	if err := c.startAgent("strict"); err != nil {
		c.fail("agent: %v", err)
		return
	}
	c.driverLog = c.driverTierLog()
	c.offered = c.offers()
	if err := c.findGPU(); err != nil {
		c.fail("%v", err)
		return
	}
	c.step("uncapped baseline")
	base := c.runScenario("uncapped", []loopSpec{{}})
	if base.err != nil || len(base.rates) != 1 {
		c.fail("uncapped baseline: %v", base.err)
		return
	}
	c.baseline, _, _ = base.stats(0)
	c.step("a lone tenant at 100%% under strict")
	solo := c.runScenario("strict-100", []loopSpec{{slices: slicesPerGPU}})
	if solo.err != nil || len(solo.rates) != 1 {
		c.fail("lone tenant: %v", solo.err)
		return
	}
	c.solo, _, _ = solo.stats(0)
	c.scenarios = append(c.scenarios, base, solo)
	for _, sc := range []struct {
		name   string
		slices []int
	}{{"strict-30-70", []int{6, 14}}, {"strict-10-30-60", []int{2, 6, 12}}} {
		c.step("scenario %s", sc.name)
		loops := make([]loopSpec, len(sc.slices))
		for i, n := range sc.slices {
			loops[i] = loopSpec{slices: n}
		}
		r := c.runScenario(sc.name, loops)
		if r.err != nil {
			c.fail("scenario %s: %v", sc.name, r.err)
		}
		c.scenarios = append(c.scenarios, r)
	}
	c.runLatency()
	c.step("four tenants at 25%% under burst")
	if err := c.restartAgent("burst"); err != nil {
		c.fail("restart the agent under burst: %v", err)
	} else {
		q := slicesPerGPU / 4
		r := c.runScenario("burst-4x25", []loopSpec{{slices: q}, {slices: q}, {slices: q}, {slices: q}})
		if r.err != nil {
			c.fail("scenario burst-4x25: %v", r.err)
		}
		c.burst = &r
	}
	c.step("memory hog")
	c.hog = c.runHog()
	c.tier = c.memoryTier()
}

// runLatency runs the latency victim alone, then beside a greedy
// neighbour: under strict (each holds half the GPU), under plain
// time-slicing (both outside every pod: nothing holds either), and under
// MPS where the machine allows it.
func (c *check) runLatency() {
	half := slicesPerGPU / 2
	for _, sc := range []struct {
		name  string
		loops []loopSpec
	}{
		{"victim alone", []loopSpec{{slices: half, latency: true}}},
		{"beside a greedy neighbour, strict", []loopSpec{{slices: half, latency: true}, {slices: half}}},
		{"beside a greedy neighbour, time-slicing", []loopSpec{{latency: true}, {}}},
	} {
		c.step("latency: %s", sc.name)
		r := c.runScenario(sc.name, sc.loops)
		if r.err != nil {
			c.fail("latency %s: %v", sc.name, r.err)
		}
		c.latency = append(c.latency, r)
	}
	c.step("latency: beside a greedy neighbour, MPS")
	env, stop, err := c.b.startMPS()
	if err != nil {
		c.mps = err.Error()
		return
	}
	defer stop()
	saved := c.extraEnv
	c.extraEnv = env
	r := c.runScenario("beside a greedy neighbour, MPS", []loopSpec{{latency: true}, {}})
	c.extraEnv = saved
	if r.err != nil {
		c.mps = r.err.Error()
		return
	}
	c.latency = append(c.latency, r)
}

// findGPU reads the GPU's UUID from the slices the agent offers.
// offers lists every resource the agent registered with the kubelet
// stand-in and how many devices each offers (Healthy of all): on a GPU in
// MIG mode, its instances under their resources and no vgpu slices.
func (c *check) offers() string {
	// The MIG resources register beside nvidia.com/vgpu; give them a moment.
	time.Sleep(2 * time.Second)
	seen := map[string]bool{}
	var out []string
	for _, r := range c.kubelet.Registrations() {
		name := r.Request.GetResourceName()
		if seen[name] {
			continue
		}
		seen[name] = true
		p := c.kubelet.Plugin(name)
		if p == nil {
			continue
		}
		healthy := 0
		devs := p.Devices()
		for _, d := range devs {
			if d.Health == "Healthy" {
				healthy++
			}
		}
		out = append(out, fmt.Sprintf("`%s`: %d of %d Healthy", name, healthy, len(devs)))
	}
	sort.Strings(out)
	if len(out) == 0 {
		return "nothing"
	}
	return strings.Join(out, "; ")
}

func (c *check) findGPU() error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if devs := c.plugin.Devices(); len(devs) > 0 {
			c.uuid, _, _ = strings.Cut(devs[0].ID, "::")
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("the agent offered no slices in 10 s")
}

// driverTierLog is what the agent logged about the driver's per-cgroup
// memory limits at start.
func (c *check) driverTierLog() string {
	for _, line := range strings.Split(c.agentLog(), "\n") {
		if strings.Contains(line, "driver GPU memory limits") {
			return strings.TrimSpace(line)
		}
	}
	return "(nothing logged: the tier was not asked for)"
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

func (c *check) startAgent(policy string) error {
	k, err := kubeletstub.Start(c.dir)
	if err != nil {
		return err
	}
	c.kubelet = k
	sock := filepath.Join(c.dir, "pod-resources.sock")
	if c.podres, err = k.ServePodResources(sock); err != nil {
		return err
	}
	return c.runAgent(policy)
}

// restartAgent stops the agent (it thaws what it froze) and starts it
// again under another compute policy.
func (c *check) restartAgent(policy string) error {
	c.stopAgent()
	return c.runAgent(policy)
}

func (c *check) stopAgent() {
	if c.agent == nil || c.agent.Process == nil {
		return
	}
	_ = c.agent.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.agentOK:
	case <-time.After(10 * time.Second):
		_ = c.agent.Process.Kill()
		<-c.agentOK
	}
	c.agent = nil
}

// runAgent starts the agent under policy and waits for it to register.
func (c *check) runAgent(policy string) error {
	sock := filepath.Join(c.dir, "pod-resources.sock")
	c.policy = policy
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	c.addr = l.Addr().String()
	_ = l.Close()
	args := append([]string{
		"--device-plugin-dir=" + c.dir, "--pod-resources-socket=" + sock, "--metrics-address=" + c.addr, "--health-address=127.0.0.1:0",
		"--cgroup-root=/sys/fs/cgroup", "--slices-per-gpu=" + strconv.Itoa(slicesPerGPU), "--compute-policy=" + policy,
		"--enforcement-state=" + filepath.Join(c.dir, "enforcement.json"), "--unauthorized-gpu-use=log",
		"--node-labels=false", "--runtime-state-dirs=" + filepath.Join(c.dir, "no-runtime"),
	}, c.b.agentArgs()...)
	c.agent = exec.Command(c.o.agent, args...)
	c.agent.Env = append(os.Environ(), c.b.agentEnv()...)
	logf, err := os.OpenFile(filepath.Join(c.dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
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
	if prev := c.plugin; prev != nil {
		// A restarted agent registers anew: wait for its connection, not
		// the stand-in's to the agent that stopped.
		if err := c.kubelet.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool { return k.PluginLocked(resource) != prev }); err != nil {
			return fmt.Errorf("the restarted agent never registered %s: %w\n%s", resource, err, c.agentLog())
		}
	}
	if c.plugin, err = c.kubelet.WaitPlugin(ctx, resource); err != nil {
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
	dir := p.cg // a process outside every pod: its cgroup alone
	if p.envs != nil {
		c.plugin.Release(p.name, "main")
		dir = filepath.Dir(p.cg) // the pod's
	}
	_ = cgrouptest.RemoveTree(dir, 5*time.Second) // best effort: the run goes on
}

// runScenario starts each loop (a pod holding its slices, or a process
// outside every pod), settles, and measures each loop's completed work
// per second over consecutive windows.
func (c *check) runScenario(name string, loops []loopSpec) scenario {
	r := scenario{name: name, policy: c.policy, loops: loops}
	var pods []pod
	var procs []*proc
	defer func() {
		for i := range pods {
			c.evict(pods[i], procs[i])
		}
	}()
	for i, l := range loops {
		p, err := c.place(fmt.Sprintf("check/%s-%d", strings.ReplaceAll(name, " ", "-"), i), l.slices)
		if err != nil {
			r.err = err
			return r
		}
		env := append(append(os.Environ(), p.env...), c.extraEnv...)
		var pr *proc
		if l.latency {
			pr, err = c.b.startLatency(p.cg, env)
		} else {
			pr, err = c.b.startLoop(p.cg, env)
		}
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
	if r.err = c.measure(&r, pods, procs); r.err == nil && name == "strict-10-30-60" {
		c.attribute(pods, procs)
	}
	return r
}

// place gives a loop its place: a pod holding slices, or, with none, a
// cgroup outside every pod, whose process the agent never throttles.
func (c *check) place(name string, slices int) (pod, error) {
	if slices > 0 {
		return c.admit(name, slices)
	}
	p := pod{name: name, cg: filepath.Join(c.base, "uncapped", fmt.Sprintf("%x", sha256.Sum256([]byte(name)))[:16])}
	if c.uuid != "" {
		p.env = []string{"NVIDIA_VISIBLE_DEVICES=" + c.uuid, "CUDA_VISIBLE_DEVICES=" + c.uuid}
	}
	return p, os.MkdirAll(p.cg, 0o750)
}

// measure fills r with each loop's completed work per second in each
// window (and each second's work, raw), the victim's step times, and the
// agent's reading and duty for each pod over the whole span.
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
	// The victim's steps before the windows are the settling's.
	from := make([]int, len(procs))
	for i, p := range procs {
		if r.loops[i].latency {
			st, err := c.b.steps(p)
			if err != nil {
				return err
			}
			from[i] = len(st)
		}
	}
	if err := c.measureWindows(r, procs); err != nil {
		return err
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
	r.steps = make([][]float64, len(procs))
	for i, p := range procs {
		if !r.loops[i].latency {
			continue
		}
		st, err := c.b.steps(p)
		if err != nil {
			return err
		}
		r.steps[i] = st[min(from[i], len(st)):]
	}
	return nil
}

// measureWindows measures each saturating loop's work per second in each
// window, and its work in each second.
func (c *check) measureWindows(r *scenario, procs []*proc) error {
	r.rates = make([][]float64, len(procs))
	r.raw = make([][]float64, len(procs))
	read := func() ([][2]float64, error) {
		out := make([][2]float64, len(procs))
		for i, p := range procs {
			if r.loops[i].latency {
				continue
			}
			if p.exited() {
				return nil, fmt.Errorf("loop %d exited: %v", i, p.cmd.ProcessState)
			}
			d, at, err := c.b.work(p)
			if err != nil {
				return nil, err
			}
			out[i] = [2]float64{d, at}
		}
		return out, nil
	}
	for range windows {
		start, err := read()
		if err != nil {
			return err
		}
		prev := start
		for elapsed := time.Duration(0); elapsed < c.o.measure; elapsed += time.Second {
			if !sleep(c.ctx, min(time.Second, c.o.measure-elapsed)) {
				return c.ctx.Err()
			}
			now, err := read()
			if err != nil {
				return err
			}
			for i := range procs {
				if !r.loops[i].latency {
					r.raw[i] = append(r.raw[i], now[i][0]-prev[i][0])
				}
			}
			prev = now
		}
		for i := range procs {
			if r.loops[i].latency {
				continue
			}
			rate := 0.0
			if prev[i][1] > start[i][1] {
				rate = (prev[i][0] - start[i][0]) / (prev[i][1] - start[i][1])
			}
			r.rates[i] = append(r.rates[i], rate)
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
	c.stopAgent()
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
