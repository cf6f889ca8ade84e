// Package e2e is the end-to-end tier: gpu-agent under a real kubelet,
// kube-apiserver and containerd, with pods that really run. It runs with
// GPUSLICE_E2E=1 (make test-e2e); GPUSLICE_REQUIRE_E2E=1 turns a missing
// requirement into a failure instead of a skip.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/e2e/cluster"
)

// c is the cluster every scenario shares; each uses its own namespace.
var c *cluster.Cluster

// pluginBin is the kubectl-gpuslice binary; agentBin the agent's;
// controllerBin the quota controller's; extenderBin gpu-scheduler-extender.
var pluginBin, agentBin, controllerBin, extenderBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("GPUSLICE_E2E") == "" {
		fmt.Println("e2e: skipped (set GPUSLICE_E2E=1, or run make test-e2e)")
		return 0
	}
	if missing := cluster.Requirements(); len(missing) > 0 {
		fmt.Printf("e2e: this machine lacks %v\n", missing)
		if os.Getenv("GPUSLICE_REQUIRE_E2E") != "" {
			return 1
		}
		return 0
	}
	bins, err := os.MkdirTemp("", "gpuslice-e2e-bin-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer func() { _ = os.RemoveAll(bins) }()
	// A killed run's leftovers are reaped by the next one (cluster.ReapStale).
	if err := os.WriteFile(filepath.Join(bins, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		fmt.Println(err)
		return 1
	}
	agentBin = filepath.Join(bins, "gpu-agent")
	agent, workload := agentBin, filepath.Join(bins, "workload")
	build := exec.Command("go", "build", "-o", agent, "github.com/gpuslice/gpuslice/cmd/gpu-agent")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Printf("build gpu-agent: %v: %s\n", err, out)
		return 1
	}
	pluginBin = filepath.Join(bins, "kubectl-gpuslice")
	build = exec.Command("go", "build", "-o", pluginBin, "github.com/gpuslice/gpuslice/cmd/kubectl-gpuslice")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Printf("build kubectl-gpuslice: %v: %s\n", err, out)
		return 1
	}
	// kubectl (1.26+) completes a plugin's arguments through this name.
	if err := os.Symlink("kubectl-gpuslice", filepath.Join(bins, "kubectl_complete-gpuslice")); err != nil {
		fmt.Println(err)
		return 1
	}
	controllerBin = filepath.Join(bins, "gpu-quota-controller")
	build = exec.Command("go", "build", "-o", controllerBin, "github.com/gpuslice/gpuslice/cmd/gpu-quota-controller")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Printf("build gpu-quota-controller: %v: %s\n", err, out)
		return 1
	}
	extenderBin = filepath.Join(bins, "gpu-scheduler-extender")
	build = exec.Command("go", "build", "-o", extenderBin, "github.com/gpuslice/gpuslice/cmd/gpu-scheduler-extender")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Printf("build gpu-scheduler-extender: %v: %s\n", err, out)
		return 1
	}
	draBin := filepath.Join(bins, "gpu-dra-driver")
	build = exec.Command("go", "build", "-o", draBin, "github.com/gpuslice/gpuslice/cmd/gpu-dra-driver")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Printf("build gpu-dra-driver: %v: %s\n", err, out)
		return 1
	}
	// Static: it runs inside the test image, which has no libc.
	build = exec.Command("go", "build", "-o", workload, "github.com/gpuslice/gpuslice/internal/fakegpu/workload")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Printf("build workload: %v: %s\n", err, out)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	opts := cluster.Options{
		AgentBin: agent, WorkloadBin: workload,
		FakeGPU:   "preset: A100-40GB\ncount: 2\n",
		AgentArgs: []string{"--slices-per-gpu=4", "--log-level=debug", "--compute-policy=strict", "--memory-policy=kill"},
		Log:       func(f string, a ...any) { fmt.Printf("e2e: "+f+"\n", a...) },
	}
	if draOff = draMode(); draOff == "" {
		opts.DRADriverBin, opts.DRADriverArgs = draBin, []string{"--slices-per-gpu=4", "--health-address=127.0.0.1:0"}
	}
	fmt.Printf("e2e: DRA mode: %s\n", map[bool]string{true: "on", false: "off (" + draOff + ")"}[draOff == ""])
	// Free ports are picked before the components bind them, so another
	// process can take one in between: a failed start is retried once,
	// from scratch (Start stops what it started).
	for attempt := 1; ; attempt++ {
		if c, err = cluster.Start(ctx, opts); err == nil {
			break
		}
		fmt.Printf("e2e: cluster did not start (attempt %d): %v\n", attempt, err)
		if attempt == 2 {
			return 1
		}
	}
	fmt.Printf("e2e: cluster up in %v in %s (kubeconfig %s, agent metrics %s)\n", time.Since(start).Round(time.Millisecond), c.Dir, c.API.Kubeconfig, c.MetricsAddr)
	// Interrupted: tear down before dying.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Printf("e2e: %v: tearing the cluster down\n", s)
		c.Stop()
		os.Exit(1)
	}()
	code := m.Run()
	if code != 0 {
		fmt.Println(c.Logs())
	}
	stop := time.Now()
	c.Stop()
	fmt.Printf("e2e: cluster down in %v\n", time.Since(stop).Round(time.Millisecond))
	return code
}

// draMode says why the cluster cannot run in DRA mode, or "" when it can:
// containerd must inject CDI devices (2.x) and Kubernetes must share
// devices by capacity (1.36 or later, docs/dra.md).
func draMode() string {
	ok, v := cluster.ContainerdHasCDI()
	if !ok {
		return "containerd " + v + " has no CDI (test/e2e/build-containerd.sh builds 2.x)"
	}
	out, err := exec.Command(filepath.Join(apiserver.BinDir(), "kubelet"), "--version").Output()
	m := regexp.MustCompile(`v1\.(\d+)\.`).FindStringSubmatch(string(out))
	if err != nil || m == nil {
		return fmt.Sprintf("kubelet version unknown: %v %q", err, out)
	}
	if minor, _ := strconv.Atoi(m[1]); minor < 36 {
		return "Kubernetes 1." + m[1] + " shares no device by capacity (1.36 and later do)"
	}
	return ""
}
