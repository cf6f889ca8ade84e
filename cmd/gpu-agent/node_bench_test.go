package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/internal/fakegpu/protocol"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// BenchmarkNode runs the real agent at node scale: 8 fake H100s cut into 25,
// 50 and 100 slices each, as many single-slice pods (200, 400 and 800), each
// a real process in its own
// pod-shaped cgroup that the fake driver lists on its GPU. The agent runs
// on its real NVML path (go-nvml) against the fake libnvidia-ml, whose
// state this benchmark's process rewrites every 500 ms as a driver updates
// its samples, so the agent's CPU is the agent's. It measures, with the
// agent's own /proc counters:
//
//   - sampler_cpu_pct: the agent's CPU over 10 s under the burst policy,
//     where nothing is throttled: sampling, attribution and metrics;
//   - throttle_cpu_pct: the same under strict, where every container is
//     throttled (200 throttles freezing and thawing every period);
//   - scrape_p50_ms, scrape_p99_ms: /metrics requests over HTTP, each
//     after a new sample, as Prometheus scrapes (every 15 s or so, the
//     agent samples every second): each renders the exposition anew;
//   - rss_hwm_mib: the agent's peak resident set (VmHWM).
//
// make bench-node prints one line per size, and how the sampler's CPU and
// the RSS grow per container from the smallest size (1.00 is flat). With
// -short (make bench-smoke) it runs 8 GPUs × 2 pods over shorter windows,
// so it keeps working at small cost.
func BenchmarkNode(b *testing.B) {
	sizes, window, scrapes := []int{25, 50, 100}, 10*time.Second, 20
	if testing.Short() {
		sizes, window, scrapes = []int{2}, 2*time.Second, 3
	}
	for b.Loop() {
		var first nodeResult
		for i, perGPU := range sizes {
			r := runNodeScenario(b, perGPU, window, scrapes)
			// The first size's line is the node line the goals read;
			// the others are keyed by their size.
			size := ""
			if i > 0 {
				size = fmt.Sprintf("%d ", 8*perGPU)
			}
			fmt.Printf("node %sgpus=8 containers=%d rss_hwm_mib=%.1f scrape_p50_ms=%.2f scrape_p99_ms=%.2f sampler_cpu_pct=%.2f throttle_cpu_pct=%.2f\n",
				size, 8*perGPU, r.hwmMiB, r.p50, r.p99, r.samplerCPU, r.throttleCPU)
			if i == 0 {
				first = r
			} else {
				grew := float64(perGPU) / float64(sizes[0])
				fmt.Printf("node %sper-container-over-%d sampler_cpu_ratio=%.2f throttle_cpu_ratio=%.2f rss_ratio=%.2f\n",
					size, 8*sizes[0], r.samplerCPU/first.samplerCPU/grew, r.throttleCPU/first.throttleCPU/grew, r.hwmMiB/first.hwmMiB/grew)
			}
			b.ReportMetric(r.hwmMiB, fmt.Sprintf("rss-hwm-MiB-%d", 8*perGPU))
			b.ReportMetric(r.p99, fmt.Sprintf("scrape-p99-ms-%d", 8*perGPU))
			b.ReportMetric(r.samplerCPU, fmt.Sprintf("sampler-cpu-%%-%d", 8*perGPU))
			b.ReportMetric(r.throttleCPU, fmt.Sprintf("throttle-cpu-%%-%d", 8*perGPU))
		}
	}
}

type nodeResult struct {
	hwmMiB, p50, p99, samplerCPU, throttleCPU float64
}

func runNodeScenario(b *testing.B, perGPU int, window time.Duration, scrapes int) nodeResult {
	b.Helper()
	dir, work, runtime := b.TempDir(), b.TempDir(), b.TempDir()
	lib := fakeDriver(b, work)
	base := filepath.Join(unifiedRoot, fmt.Sprintf("gpuslice-bench-node-%d-%d", os.Getpid(), perGPU))
	if err := os.MkdirAll(base, 0o750); err != nil {
		cgrouptest.Skip(b, "cannot create cgroups under %s: %v", unifiedRoot, err)
	}
	var procs []*exec.Cmd
	b.Cleanup(func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
		if err := cgrouptest.RemoveTree(base, 5*time.Second); err != nil {
			b.Error(err)
		}
	})
	var res nodeResult
	for _, policy := range []string{"burst", "strict"} {
		k, err := kubeletstub.Start(dir)
		if err != nil {
			b.Fatal(err)
		}
		sock := filepath.Join(dir, "pod-resources.sock")
		pr, err := k.ServePodResources(sock)
		if err != nil {
			b.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", freePortNumber(b))
		cmd, _ := startBenchAgent(b, dir, "--gpu-backend=nvml", "--nvml-library="+lib, "--slices-per-gpu="+strconv.Itoa(perGPU), "--metrics-address="+addr,
			"--pod-resources-socket="+sock, "--cgroup-root=/sys/fs/cgroup", "--runtime-state-dirs="+runtime, "--compute-policy="+policy, "--unauthorized-gpu-use=log")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		p, err := k.WaitPlugin(ctx, "nvidia.com/vgpu")
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		if policy == "burst" {
			// The pods: one slice each, a sleeping process in its
			// container's cgroup that the fake driver lists on its GPU.
			for i := range 8 * perGPU {
				name := fmt.Sprintf("bench/p%d", i)
				a, err := p.Allocate(context.Background(), name, "main", 1)
				if err != nil {
					b.Fatal(err)
				}
				cid := fmt.Sprintf("%064x", i+1)
				cg := filepath.Join(base, "kubepods", "burstable", "pod"+kubeletstub.PodUID(name), cid)
				// The runtime's record of the container, as containerd
				// keeps it beside every container it runs.
				writeBundle(b, runtime, cid, name, "main")
				if err := os.MkdirAll(cg, 0o750); err != nil {
					b.Fatal(err)
				}
				sleep := exec.Command("sleep", "3600")
				if err := sleep.Start(); err != nil {
					b.Fatal(err)
				}
				procs = append(procs, sleep)
				if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(sleep.Process.Pid)), 0o600); err != nil {
					b.Fatal(err)
				}
				gpu := a.Response.Envs["NVIDIA_VISIBLE_DEVICES"]
				if err := protocol.WriteWorkloadState(work, sleep.Process.Pid, protocol.WorkloadState{GPU: gpu, MemoryBytes: 256 << 20, Demand: 0.01}); err != nil {
					b.Fatal(err)
				}
			}
		} else {
			// The same pods, as a restarted kubelet would admit them again.
			for i := range 8 * perGPU {
				if _, err := p.Allocate(context.Background(), fmt.Sprintf("bench/p%d", i), "main", 1); err != nil {
					b.Fatal(err)
				}
			}
		}
		waitAttributed(b, addr, 8*perGPU)
		cpu := agentCPU(b, cmd.Process.Pid, window)
		if policy == "burst" {
			res.samplerCPU = cpu
			res.p50, res.p99 = scrapeLatency(b, addr, scrapes)
		} else {
			res.throttleCPU = cpu
			hwm, err := procStatusKiB(cmd.Process.Pid, "VmHWM:")
			if err != nil {
				b.Fatal(err)
			}
			res.hwmMiB = float64(hwm) / 1024
		}
		stopBenchAgent(b, cmd)
		pr.Stop()
		k.Stop()
	}
	return res
}

// writeBundle writes the runtime's bundle config of a container of pod
// ("namespace/name") under dir, with the annotations containerd gives it.
func writeBundle(b *testing.B, dir, cid, pod, container string) {
	b.Helper()
	ns, name, _ := strings.Cut(pod, "/")
	data := fmt.Sprintf(`{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":%q,`+
		`"io.kubernetes.cri.sandbox-uid":%q,"io.kubernetes.cri.sandbox-name":%q,"io.kubernetes.cri.sandbox-namespace":%q}}`,
		container, kubeletstub.PodUID(pod), name, ns)
	if err := os.MkdirAll(filepath.Join(dir, cid), 0o750); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, cid, "config.json"), []byte(data), 0o600); err != nil {
		b.Fatal(err)
	}
}

// fakeDriver builds the fake libnvidia-ml and keeps its state file, named
// in the environment the agent inherits, current with the workloads in
// work: rewritten every 500 ms until the benchmark ends.
func fakeDriver(b *testing.B, work string) string {
	b.Helper()
	lib, err := fakegpu.BuildNVMLLibrary(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	node, err := fakegpu.New(fakegpu.Config{Preset: "H100-80GB", Count: 8, WorkloadDir: work})
	if err != nil {
		b.Fatal(err)
	}
	state := filepath.Join(b.TempDir(), "nvml-state")
	if err := node.WriteNVMLState(state); err != nil {
		b.Fatal(err)
	}
	b.Setenv(fakegpu.NVMLStateEnv, state)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = node.WriteNVMLState(state)
			}
		}
	}()
	b.Cleanup(func() { cancel(); <-done; _ = node.Close() })
	return lib
}

// waitAttributed waits until the agent reports n containers' memory.
func waitAttributed(b *testing.B, addr string, n int) {
	b.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			got := 0
			for _, line := range strings.Split(string(body), "\n") {
				if strings.HasPrefix(line, "gpuslice_container_memory_used_bytes{") && !strings.HasSuffix(line, " 0") {
					got++
				}
			}
			if got >= n {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d containers attributed after 60 s", got, n)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// agentCPU is the share of one core the process used over d.
func agentCPU(b *testing.B, pid int, d time.Duration) float64 {
	b.Helper()
	ticks := func() float64 {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			b.Fatal(err)
		}
		s := string(data)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		u, _ := strconv.ParseFloat(f[11], 64)
		k, _ := strconv.ParseFloat(f[12], 64)
		return u + k
	}
	t0, c0 := time.Now(), ticks()
	time.Sleep(d)
	return (ticks() - c0) / 100 / time.Since(t0).Seconds() * 100 // USER_HZ ticks to percent of a core
}

// scrapeLatency makes n /metrics requests over HTTP, each after the agent
// took a new sample (1.1 s apart), and returns the p50 and p99 in
// milliseconds.
func scrapeLatency(b *testing.B, addr string, n int) (p50, p99 float64) {
	b.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	var ms []float64
	for range n {
		start := time.Now()
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		ms = append(ms, float64(time.Since(start).Microseconds())/1000)
		time.Sleep(1100 * time.Millisecond)
	}
	slices.Sort(ms)
	return ms[len(ms)/2], ms[len(ms)*99/100]
}

func procStatusKiB(pid int, key string) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", key, pid)
}
