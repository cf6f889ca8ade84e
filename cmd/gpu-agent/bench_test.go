package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

func reportMillis(b *testing.B, samples []time.Duration) {
	b.Helper()
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	ms := func(q float64) float64 {
		return float64(samples[int(q*float64(len(samples)-1))].Microseconds()) / 1e3
	}
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(1), "max-ms")
}

func startBenchAgent(b *testing.B, dir string, extra ...string) (*exec.Cmd, time.Time) {
	b.Helper()
	args := append([]string{"--gpu-backend=fake", "--device-plugin-dir=" + dir, "--metrics-address=127.0.0.1:0", "--log-level=warn",
		"--enforcement-state=" + filepath.Join(b.TempDir(), "enforcement.json")}, extra...)
	cmd := exec.Command(agentBin, args...)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd, start
}

func stopBenchAgent(b *testing.B, cmd *exec.Cmd) {
	b.Helper()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		b.Fatalf("agent exit: %v", err)
	}
}

// BenchmarkExecToRegistered measures from exec of the real binary to the
// kubelet stand-in receiving its Register call.
func BenchmarkExecToRegistered(b *testing.B) {
	var samples []time.Duration
	for b.Loop() {
		dir := b.TempDir()
		k, err := kubeletstub.Start(dir)
		if err != nil {
			b.Fatal(err)
		}
		cmd, start := startBenchAgent(b, dir)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = k.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool { return k.RegistrationCountLocked() > 0 })
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		samples = append(samples, k.Registrations()[0].At.Sub(start))
		stopBenchAgent(b, cmd)
		k.Stop()
	}
	reportMillis(b, samples)
}

// BenchmarkReregisterAfterKubeletRestart measures from a kubelet restart
// (sockets removed, kubelet.sock created) to the agent's new Register call.
func BenchmarkReregisterAfterKubeletRestart(b *testing.B) {
	dir := b.TempDir()
	k, err := kubeletstub.Start(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer k.Stop()
	cmd, _ := startBenchAgent(b, dir)
	defer stopBenchAgent(b, cmd)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool { return k.RegistrationCountLocked() > 0 }); err != nil {
		b.Fatal(err)
	}
	var samples []time.Duration
	for b.Loop() {
		before := len(k.Registrations())
		start := time.Now()
		if err := k.Restart(); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := k.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool { return k.RegistrationCountLocked() > before })
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		samples = append(samples, k.Registrations()[before].At.Sub(start))
	}
	reportMillis(b, samples)
}

// BenchmarkIdleRSS8GPUs starts the real binary on 8 fake H100s × 16
// slices, registered with a kubelet stand-in that holds a ListAndWatch
// stream, lets it idle and reports its resident set size.
func BenchmarkIdleRSS8GPUs(b *testing.B) {
	fake := filepath.Join(b.TempDir(), "node.yaml")
	if err := os.WriteFile(fake, []byte("preset: H100-80GB\ncount: 8\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	var rss []float64
	for b.Loop() {
		dir := b.TempDir()
		k, err := kubeletstub.Start(dir)
		if err != nil {
			b.Fatal(err)
		}
		cmd, _ := startBenchAgent(b, dir, "--fake-config="+fake, "--slices-per-gpu=16")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = k.WaitPlugin(ctx, "nvidia.com/vgpu")
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second) // idle: let start-up garbage be collected
		kib, err := vmRSS(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		rss = append(rss, float64(kib)/1024)
		stopBenchAgent(b, cmd)
		k.Stop()
	}
	sort.Float64s(rss)
	b.ReportMetric(rss[len(rss)-1], "max-rss-MiB")
}

func vmRSS(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
