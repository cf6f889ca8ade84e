package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

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
	args := append([]string{"--gpu-backend=fake", "--device-plugin-dir=" + dir, "--metrics-address=127.0.0.1:0", "--health-address=127.0.0.1:0", "--log-level=warn",
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

// BenchmarkRSSUnderHostileClients measures the real agent's RSS (8 fake
// H100 × 16 slices) while clients attack it: 256 concurrent /metrics
// scrapes from clients that never read the answer (reported also as what
// they add to the RSS just before them), then 2,000 ListAndWatch streams
// that are never read. The agent bounds both; this records what that
// costs.
func BenchmarkRSSUnderHostileClients(b *testing.B) {
	fake := filepath.Join(b.TempDir(), "node.yaml")
	if err := os.WriteFile(fake, []byte("preset: H100-80GB\ncount: 8\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	var streams, scrapes, added []float64
	for b.Loop() {
		dir := b.TempDir()
		k, err := kubeletstub.Start(dir)
		if err != nil {
			b.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", freePortNumber(b))
		cmd, _ := startBenchAgent(b, dir, "--fake-config="+fake, "--slices-per-gpu=16", "--metrics-address="+addr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = k.WaitPlugin(ctx, "nvidia.com/vgpu")
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		// Scrapes whose answers are never read, against the agent's RSS
		// just before them.
		base, err := vmRSS(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		var raw []net.Conn
		for range 256 {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				continue // past the connection bound: the backlog is full
			}
			raw = append(raw, c)
			fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
		}
		time.Sleep(5 * time.Second)
		kib, err := vmRSS(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		scrapes = append(scrapes, float64(kib)/1024)
		added = append(added, float64(kib-base)/1024)
		for _, c := range raw {
			_ = c.Close()
		}
		// Unread streams, each on its own connection, as many as the
		// agent lets in; the rest wait in the listen backlog or fail.
		sctx, scancel := context.WithCancel(context.Background())
		var conns []*grpc.ClientConn
		for range 2000 {
			conn, err := grpc.NewClient("unix://"+agentSocket(b, dir), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, conn)
			go func() { _, _ = pluginapi.NewDevicePluginClient(conn).ListAndWatch(sctx, &pluginapi.Empty{}) }()
		}
		time.Sleep(5 * time.Second)
		if kib, err = vmRSS(cmd.Process.Pid); err != nil {
			b.Fatal(err)
		}
		streams = append(streams, float64(kib)/1024)
		scancel()
		for _, c := range conns {
			_ = c.Close()
		}
		stopBenchAgent(b, cmd)
		k.Stop()
	}
	sort.Float64s(streams)
	sort.Float64s(scrapes)
	b.ReportMetric(streams[len(streams)-1], "unread-streams-rss-MiB")
	b.ReportMetric(scrapes[len(scrapes)-1], "unread-scrapes-rss-MiB")
	sort.Float64s(added)
	b.ReportMetric(added[len(added)-1], "unread-scrapes-added-MiB")
}

func freePortNumber(b *testing.B) int {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}
