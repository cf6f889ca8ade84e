package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
)

// TestOneConfigFileWithModelRules: the driver reads the node binaries' one
// config file, agent keys and all, and cuts each GPU by its model's rule,
// as the agent does. Before the shared file the driver had no --config and
// no per-model rules: a node of mixed models whose agent cut an H100 into
// 10 GiB slices had a driver cutting it into --slices-per-gpu, so a slice
// meant one thing to the device plugin and another to DRA.
func TestOneConfigFileWithModelRules(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fake := filepath.Join(dir, "fake.yaml")
	if err := os.WriteFile(fake, []byte("gpus:\n  - preset: H100-80GB\n  - preset: A100-40GB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(file, []byte(`apiVersion: gpuslice.io/v1alpha1
kind: NodeConfig
gpuBackend: fake
fakeConfig: `+fake+`
nodeName: n1
slicing:
  slicesPerGPU: 4
  models:
    "NVIDIA H100 80GB HBM3": {sliceMemory: 10Gi}
metricsAddress: ":9445"
enforcement: {mode: best-effort}
dra: {enabled: true, preparedClaims: `+filepath.Join(dir, "p.json")+`, extendedResource: true}
health: {ignoredXIDs: [13, 43]}
draDriver: {cdiDir: `+filepath.Join(dir, "cdi")+`, kubeAPIQPS: 20, taints: {fatalEffect: NoSchedule, fatalXIDs: [79]}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig([]string{"--config", file}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Driver.KubeAPIQPS != 20 || cfg.Driver.KubeAPIBurst != 100 || !cfg.DRA.ExtendedResource || cfg.NodeName != "n1" {
		t.Errorf("config = %+v", cfg)
	}
	if p, err := taintPolicy(cfg); err != nil || p.Fatal != "NoSchedule" || p.Recoverable != "NoSchedule" || len(p.FatalXIDs) != 1 {
		t.Errorf("taint policy = %+v, %v; want the file's fatal NoSchedule on XID 79, recoverable by default", p, err)
	}
	if o := cfg.NVMLOptions(); len(o.IgnoredXIDs) != 2 || o.IgnoredXIDs[1] != 43 {
		t.Errorf("ignored XIDs = %v, want the file's [13 43]", o.IgnoredXIDs)
	}
	log := slog.New(slog.DiscardHandler)
	b, err := gpubackend.Open(cfg.GPUBackend, cfg.FakeConfig, cfg.NVMLOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close() }()
	n, err := describe(b.Backend, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	gpus := n.layout.GPUs()
	// H100: 81559 MiB in 10 GiB slices is 7; the A100 keeps the default 4.
	if len(gpus) != 2 || gpus[0].Slices != 7 || gpus[1].Slices != 4 {
		t.Errorf("layout = %+v; want the H100 in 7 slices of 10Gi and the A100 in 4", gpus)
	}
	// The slice devices the shared dra.extendedResource asks for.
	slices := 0
	for _, d := range n.devices {
		if strings.Contains(d.Name, "slice") {
			slices++
		}
	}
	if slices != 11 {
		t.Errorf("%d slice devices published, want 11 (7 + 4)", slices)
	}
}

// TestConfigFileFlagsWin: a flag given explicitly overrides the file, as
// in gpu-agent.
func TestConfigFileFlagsWin(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(file, []byte("apiVersion: gpuslice.io/v1alpha1\nkind: NodeConfig\nnodeName: from-file\nslicing: {sliceMemory: 10Gi}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig([]string{"--node-name=from-flag", "--config", file, "--slices-per-gpu=2"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	rules, _ := cfg.SliceRules()
	if cfg.NodeName != "from-flag" || rules.Default.SlicesPerGPU != 2 || rules.Default.SliceMemoryBytes != 0 {
		t.Errorf("config = %+v, slicing %+v", cfg, rules.Default)
	}
}
