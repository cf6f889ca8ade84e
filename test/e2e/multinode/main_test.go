// Package multinode is the end-to-end tier's multi-node cluster: one
// control plane and several worker nodes on this one machine, each its own
// kubelet, containerd, network namespace on a bridge, mount namespace and
// cgroup root (test/e2e/cluster.StartMulti), with gpuslice installed by
// its Helm chart on every GPU node. It runs the scenarios that only exist
// across nodes (TestCluster…) with GPUSLICE_E2E=1 (make test-e2e);
// GPUSLICE_REQUIRE_E2E=1 turns a missing requirement into a failure.
package multinode

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/e2e/cluster"
)

// m is the cluster every scenario shares; each uses its own namespace.
var m *cluster.Multi

// Binaries the scenarios run: the kubectl plugin and the quota controller.
var pluginBin, controllerBin string

// imageTag is the agent's image tag, built by make image.
const imageTag = "e2e-multi"

// gpuNodes are the nodes with a fake GPU each, GPUSLICE_E2E_NODES of
// them (make test-e2e NODES=n; 2 by default); cpuNode has none.
var gpuNodes []string

const cpuNode = "cpu-node"

func TestMain(tm *testing.M) {
	os.Exit(run(tm))
}

func run(tm *testing.M) int {
	if os.Getenv("GPUSLICE_E2E") == "" {
		fmt.Println("multinode: skipped (set GPUSLICE_E2E=1, or run make test-e2e)")
		return 0
	}
	missing := cluster.Requirements()
	if _, err := exec.LookPath("ip"); err != nil {
		missing = append(missing, "ip (iproute2)")
	}
	if len(missing) > 0 {
		fmt.Printf("multinode: this machine lacks %v\n", missing)
		if os.Getenv("GPUSLICE_REQUIRE_E2E") != "" {
			return 1
		}
		return 0
	}
	n, err := strconv.Atoi(cmp.Or(os.Getenv("GPUSLICE_E2E_NODES"), "2"))
	if err != nil || n < 2 || n > 8 {
		fmt.Printf("multinode: GPUSLICE_E2E_NODES=%q: want 2 to 8 GPU nodes\n", os.Getenv("GPUSLICE_E2E_NODES"))
		return 1
	}
	for i := range n {
		gpuNodes = append(gpuNodes, "gpu-node-"+string(rune('a'+i)))
	}
	bins, err := os.MkdirTemp("", "gpuslice-e2e-bin-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer func() { _ = os.RemoveAll(bins) }()
	if err := os.WriteFile(filepath.Join(bins, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		fmt.Println(err)
		return 1
	}
	workload, archive, err := build(bins)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	opts := cluster.MultiOptions{
		WorkloadBin: workload, Archives: []string{archive},
		// Binpacking across nodes, as docs/scheduling.md configures it:
		// the node with the fewest free slices that fit wins.
		SchedulerConfig: binpackProfile,
		Audit:           true,
		Log:             func(f string, a ...any) { fmt.Printf("multinode: "+f+"\n", a...) },
	}
	for _, name := range gpuNodes {
		opts.Nodes = append(opts.Nodes, cluster.NodeSpec{Name: name, FakeGPU: "preset: A100-40GB\ncount: 1\nseed: " + name + "\n"})
	}
	opts.Nodes = append(opts.Nodes, cluster.NodeSpec{Name: cpuNode})
	if m, err = cluster.StartMulti(ctx, opts); err != nil {
		fmt.Printf("multinode: cluster did not start: %v\n", err)
		return 1
	}
	fmt.Printf("multinode: %d nodes up in %v in %s\n", len(m.Nodes), time.Since(start).Round(time.Millisecond), m.Dir)
	if err := installChart(); err != nil {
		fmt.Printf("multinode: %v\n%s", err, m.Logs())
		m.Stop()
		return 1
	}
	fmt.Printf("multinode: the chart's agents ready on %d GPU nodes after %v\n", len(gpuNodes), time.Since(start).Round(time.Millisecond))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Printf("multinode: %v: tearing the cluster down\n", s)
		m.Stop()
		os.Exit(1)
	}()
	code := tm.Run()
	reportAgentRequests()
	if code != 0 {
		fmt.Println(m.Logs())
	}
	stop := time.Now()
	m.Stop()
	fmt.Printf("multinode: cluster down in %v\n", time.Since(stop).Round(time.Millisecond))
	return code
}

// binpackProfile scores nodes by how full their slices would be.
const binpackProfile = `profiles:
- schedulerName: default-scheduler
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources:
        - {name: nvidia.com/vgpu, weight: 1}
`

// build builds the static fake workload, the plugin and the controller
// into bins, and the agent's image (with the fake GPU node) with make
// image; it returns the workload's path and the image archive's.
func build(bins string) (workload, archive string, err error) {
	workload = filepath.Join(bins, "workload")
	pluginBin = filepath.Join(bins, "kubectl-gpuslice")
	controllerBin = filepath.Join(bins, "gpu-quota-controller")
	for _, b := range []struct{ out, pkg string }{
		{workload, "internal/fakegpu/workload"}, {pluginBin, "cmd/kubectl-gpuslice"}, {controllerBin, "cmd/gpu-quota-controller"},
	} {
		cmd := exec.Command("go", "build", "-o", b.out, "github.com/gpuslice/gpuslice/"+b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("build %s: %w: %s", b.pkg, err, out)
		}
	}
	cmd := exec.Command("make", "image", "VERSION="+imageTag)
	cmd.Dir = "../../.."
	// No GPU here: the image keeps the fake GPU node, which the shipped
	// image leaves out.
	cmd.Env = append(os.Environ(), "FAKE_GPU=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("make image: %w: %s", err, out)
	}
	archive, err = filepath.Abs(filepath.Join("../../..", "bin", "gpu-agent-image.tar"))
	return workload, archive, err
}
