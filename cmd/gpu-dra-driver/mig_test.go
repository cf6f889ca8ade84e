package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
)

// TestDriverNeverPublishesAMIGGPUWhole: a GPU in MIG mode, or whose MIG
// mode is pending, is not published as a shared whole GPU (CUDA cannot
// use it whole); the whole GPU beside it is.
func TestDriverNeverPublishesAMIGGPUWhole(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fake := filepath.Join(dir, "fake.yaml")
	if err := os.WriteFile(fake, []byte(`gpus:
- {preset: A100-40GB, mig: {mode: enabled, instances: [{profile: 1g.5gb}]}}
- {preset: A100-40GB}
- {preset: A100-40GB, mig: {pending: enabled}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig([]string{"--gpu-backend=fake", "--fake-config=" + fake, "--node-name=n1", "--cdi-dir=" + filepath.Join(dir, "cdi")}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	b, err := gpubackend.Open(cfg.GPUBackend, cfg.FakeConfig, cfg.NVMLOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close() }()
	devs, _ := b.Devices()
	n, err := describe(b.Backend, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if gpus := n.layout.GPUs(); len(gpus) != 1 || gpus[0].UUID != devs[1].UUID {
		t.Errorf("layout = %+v, want only GPU 1 (%s)", gpus, devs[1].UUID)
	}
	for _, d := range n.devices {
		for _, mig := range []string{devs[0].UUID, devs[2].UUID} {
			for _, a := range d.Attributes {
				if a.StringValue != nil && strings.Contains(*a.StringValue, mig) {
					t.Errorf("device %s is published on MIG GPU %s", d.Name, mig)
				}
			}
		}
	}
	if len(n.devices) == 0 {
		t.Error("nothing published for the whole GPU")
	}
}
