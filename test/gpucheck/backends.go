package main

import (
	"bytes"
	"context"
	_ "embed" // the PyTorch workload
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
)

//go:embed matmul.py
var matmulPy []byte

// real runs PyTorch on the machine's GPU, read by the real NVML.
type real struct {
	dir, python, script string
}

func newReal(dir, python string) (*real, error) {
	r := &real{dir: dir, python: python, script: filepath.Join(dir, "matmul.py")}
	if err := os.WriteFile(r.script, matmulPy, 0o600); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *real) agentArgs() []string { return nil }
func (r *real) agentEnv() []string  { return nil }

func (r *real) startLoop(cg string, env []string) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	progress := filepath.Join(r.dir, fmt.Sprintf("progress-%d", time.Now().UnixNano()))
	cmd := exec.Command(self, "exec", cg, r.python, r.script, "--progress", progress)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	p, err := start(cmd)
	if err != nil {
		return nil, err
	}
	p.progress = progress
	// CUDA and PyTorch take seconds to start: wait for the first count.
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(progress); err == nil {
			return p, nil
		}
		if p.exited() {
			return p, fmt.Errorf("the PyTorch loop exited at start: %v", p.cmd.ProcessState)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p, fmt.Errorf("the PyTorch loop reported no progress in 90 s")
}

func (r *real) startHog(cg string, env []string, mib uint64) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "exec", cg, r.python, r.script, "--hog-mib", strconv.FormatUint(mib, 10))
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return start(cmd)
}

func (r *real) startLatency(cg string, env []string) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	steps := filepath.Join(r.dir, fmt.Sprintf("steps-%d", time.Now().UnixNano()))
	cmd := exec.Command(self, "exec", cg, r.python, r.script, "--latency", steps)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	p, err := start(cmd)
	if err != nil {
		return nil, err
	}
	p.progress = steps
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(steps); err == nil {
			return p, nil
		}
		if p.exited() {
			return p, fmt.Errorf("the latency victim exited at start: %v", p.cmd.ProcessState)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p, errors.New("the latency victim reported no step in 90 s")
}

// steps reads the victim's step file: one duration in seconds a line; a
// last line still being written is left for the next read.
func (r *real) steps(p *proc) ([]float64, error) {
	data, err := os.ReadFile(p.progress)
	if err != nil {
		return nil, err
	}
	if i := strings.LastIndexByte(string(data), '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	var out []float64
	for _, f := range strings.Fields(string(data)) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil, fmt.Errorf("step file: %q", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// startMPS starts an MPS control daemon with its pipe and log directories
// of its own; where the driver, the GPU's compute mode or the container
// refuse it, the error says so.
func (r *real) startMPS() ([]string, func(), error) {
	pipe, logs := filepath.Join(r.dir, "mps-pipe"), filepath.Join(r.dir, "mps-log")
	for _, d := range []string{pipe, logs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, err
		}
	}
	env := []string{"CUDA_MPS_PIPE_DIRECTORY=" + pipe, "CUDA_MPS_LOG_DIRECTORY=" + logs}
	cmd := exec.Command("nvidia-cuda-mps-control", "-d")
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("nvidia-cuda-mps-control -d: %w: %s", err, strings.TrimSpace(string(out)))
	}
	stop := func() {
		q := exec.Command("nvidia-cuda-mps-control")
		q.Env = append(os.Environ(), env...)
		q.Stdin = strings.NewReader("quit\n")
		_ = q.Run()
	}
	return env, stop, nil
}

func (r *real) mig() string {
	out, err := exec.Command("nvidia-smi", "--query-gpu=index,mig.mode.current,mig.mode.pending", "--format=csv,noheader").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("unknown (nvidia-smi: %v)", err)
	}
	return strings.TrimSpace(string(out))
}

func (r *real) work(p *proc) (float64, float64, error) {
	data, err := os.ReadFile(p.progress)
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("progress file %q", data)
	}
	done, err1 := strconv.ParseFloat(f[0], 64)
	at, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("progress file %q", data)
	}
	return done, at, nil
}

func (r *real) driverView(string) (map[int]uint64, string, error) {
	out, err := exec.Command("nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits").Output()
	if err != nil {
		return nil, "nvidia-smi", err
	}
	view := map[int]uint64{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pid, mem, ok := strings.Cut(line, ",")
		if !ok {
			continue
		}
		p, err1 := strconv.Atoi(strings.TrimSpace(pid))
		m, err2 := strconv.ParseUint(strings.TrimSpace(mem), 10, 64)
		if err1 == nil && err2 == nil {
			view[p] += m << 20
		}
	}
	return view, "nvidia-smi", nil
}

func (r *real) environment() []string {
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("(%s: %v)", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	return []string{
		"GPU: " + run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"),
		"CUDA (driver): " + cudaVersion(run("nvidia-smi")),
		"PyTorch: " + run(r.python, "-c", "import torch; print(torch.__version__, 'CUDA', torch.version.cuda)"),
		"Kernel: " + run("uname", "-r"),
		"Cgroups: " + cgroupMode(),
		"Kit: gpu-check " + version,
	}
}

func (r *real) close() {}

// dry runs fake workloads on a fake node, read through the fake
// libnvidia-ml, so the whole kit runs where there is no GPU.
type dry struct {
	mu        sync.Mutex
	recorders map[int]*stepRecorder // the latency victims', by pid

	node         *fakegpu.Node
	lib, workDir string
	workload     string
	state        string
	cancel       context.CancelFunc
	done         chan struct{}
}

func newDry(dir string) (*dry, error) {
	d := &dry{workDir: filepath.Join(dir, "workloads"), state: filepath.Join(dir, "nvml-state"), recorders: map[int]*stepRecorder{}}
	if err := os.Mkdir(d.workDir, 0o750); err != nil {
		return nil, err
	}
	var err error
	if d.lib, err = fakegpu.BuildNVMLLibrary(dir); err != nil {
		return nil, err
	}
	if d.workload, err = fakegpu.BuildWorkload(dir); err != nil {
		return nil, err
	}
	if d.node, err = fakegpu.New(fakegpu.Config{Preset: "H200-141GB", Count: 1, WorkloadDir: d.workDir, DriverVersion: "580.95.05", CUDAVersion: "13.0"}); err != nil {
		return nil, err
	}
	if err := d.node.WriteNVMLState(d.state); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.done = cancel, make(chan struct{})
	go func() {
		defer close(d.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = d.node.WriteNVMLState(d.state)
			}
		}
	}()
	return d, nil
}

func (d *dry) agentArgs() []string { return []string{"--nvml-library=" + d.lib} }
func (d *dry) agentEnv() []string  { return []string{fakegpu.NVMLStateEnv + "=" + d.state} }

func (d *dry) start(cg string, env []string, args ...string) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{"exec", cg, d.workload, "--dir", d.workDir}, args...)...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	return start(cmd)
}

func (d *dry) startLoop(cg string, env []string) (*proc, error) {
	return d.start(cg, env, "--demand", "1", "--memory-mib", "2048")
}

func (d *dry) startHog(cg string, env []string, mib uint64) (*proc, error) {
	return d.start(cg, env, "--demand", "0.1", "--memory-mib", "1024", "--grow-to-mib", strconv.FormatUint(mib, 10), "--grow-after", "2s")
}

// startLatency starts a fake workload wanting a fifth of the GPU; its
// steps are the wall time each millisecond of GPU time took to be served,
// polled every 2 ms (the fake serves no requests of its own).
func (d *dry) startLatency(cg string, env []string) (*proc, error) {
	p, err := d.start(cg, env, "--demand", "0.2", "--memory-mib", "512")
	if err != nil {
		return nil, err
	}
	rec := &stepRecorder{}
	d.mu.Lock()
	d.recorders[p.pid()] = rec
	d.mu.Unlock()
	go rec.run(p, func() time.Duration { return d.node.Served(p.pid()) })
	return p, nil
}

func (d *dry) steps(p *proc) ([]float64, error) {
	d.mu.Lock()
	rec := d.recorders[p.pid()]
	d.mu.Unlock()
	if rec == nil {
		return nil, fmt.Errorf("pid %d is no latency victim", p.pid())
	}
	return rec.all(), nil
}

func (d *dry) startMPS() ([]string, func(), error) {
	return nil, nil, errors.New("no MPS on the fake GPU")
}

func (d *dry) mig() string { return "disabled (the dry run's fake GPU is not in MIG mode)" }

func (d *dry) work(p *proc) (float64, float64, error) {
	return d.node.Served(p.pid()).Seconds(), float64(time.Now().UnixNano()) / 1e9, nil
}

func (d *dry) driverView(uuid string) (map[int]uint64, string, error) {
	procs, err := d.node.Processes(uuid)
	if err != nil {
		return nil, "fake driver", err
	}
	view := map[int]uint64{}
	for _, p := range procs {
		view[p.PID] = p.MemoryBytes
	}
	return view, "the fake driver's process list", nil
}

func (d *dry) environment() []string {
	return []string{
		"GPU: none. Dry run: the fake libnvidia-ml (internal/fakegpu) on one H200-141GB preset, fake workloads instead of PyTorch",
		"Judge: GPU time the fake node served each workload (its completed work), not NVML",
		"Kernel: " + kernel(),
		"Cgroups: " + cgroupMode(),
		"Kit: gpu-check " + version,
	}
}

func (d *dry) close() {
	d.cancel()
	<-d.done
}

// stepRecorder turns a fake workload's served GPU time into steps: the
// wall time each millisecond of it took.
type stepRecorder struct {
	mu    sync.Mutex
	steps []float64
}

func (s *stepRecorder) run(p *proc, served func() time.Duration) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	last, at := served(), time.Now()
	for {
		select {
		case <-p.done:
			return
		case now := <-t.C:
			if cur := served(); cur-last >= time.Millisecond {
				s.mu.Lock()
				s.steps = append(s.steps, now.Sub(at).Seconds())
				s.mu.Unlock()
				last, at = cur, now
			}
		}
	}
}

func (s *stepRecorder) all() []float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]float64(nil), s.steps...)
}

// cgroupMode says how the machine mounts cgroups.
func cgroupMode() string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return "unified cgroup v2"
	}
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.controllers"); err == nil {
		return "hybrid (cgroup v1 controllers, v2 at /sys/fs/cgroup/unified)"
	}
	return "cgroup v1"
}

func kernel() string {
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// cudaVersion reads "CUDA Version: X.Y" from nvidia-smi's banner.
func cudaVersion(banner string) string {
	_, rest, ok := strings.Cut(banner, "CUDA Version:")
	if !ok {
		return "unknown"
	}
	if f := strings.Fields(rest); len(f) > 0 {
		return f[0]
	}
	return "unknown"
}
