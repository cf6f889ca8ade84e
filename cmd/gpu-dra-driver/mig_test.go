package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
	"github.com/gpuslice/gpuslice/pkg/nvml"
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

// TestDriverPublishesMIGInstancesWithStrategyDRA: one front end serves
// MIG instances; with --mig-strategy=dra it is the driver, and each
// instance is a device of kind "mig". With the default (mixed) the device
// plugin serves them, and with none nobody does: the driver publishes
// none.
func TestDriverPublishesMIGInstancesWithStrategyDRA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fake := filepath.Join(dir, "fake.yaml")
	if err := os.WriteFile(fake, []byte(`gpus:
- {preset: A100-40GB, mig: {mode: enabled, instances: [{profile: 3g.20gb}, {profile: 1g.5gb}]}}
- {preset: A100-40GB}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for strategy, want := range map[string][]string{"dra": {"gpu-0-mig-1-0", "gpu-0-mig-2-0"}, "mixed": nil, "none": nil} {
		cfg, err := loadConfig([]string{"--gpu-backend=fake", "--fake-config=" + fake, "--node-name=n1", "--cdi-dir=" + filepath.Join(dir, "cdi"), "--mig-strategy=" + strategy}, env(nil))
		if err != nil {
			t.Fatal(err)
		}
		b, err := gpubackend.Open(cfg.GPUBackend, cfg.FakeConfig, cfg.NVMLOptions())
		if err != nil {
			t.Fatal(err)
		}
		n, err := describe(b, cfg, slog.New(slog.DiscardHandler))
		_ = b.Close()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range n.devices {
			if strings.Contains(d.Name, "-mig-") {
				got = append(got, d.Name)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("--mig-strategy=%s: MIG devices %v, want %v", strategy, got, want)
		}
	}
}

func TestMIGChanged(t *testing.T) {
	t.Parallel()
	gpu := func(current, pending bool, instances ...string) nvml.Device {
		d := nvml.Device{UUID: "GPU-a", MIGCapable: true, MIG: nvml.MIG{Current: current, Pending: pending}}
		for i, u := range instances {
			d.MIG.Instances = append(d.MIG.Instances, nvml.MIGInstance{UUID: u, GPUInstanceID: i + 1})
		}
		return d
	}
	for name, tc := range map[string]struct {
		before, now []nvml.Device
		want        string
	}{
		"same":              {[]nvml.Device{gpu(true, true, "MIG-1")}, []nvml.Device{gpu(true, true, "MIG-1")}, ""},
		"lost":              {[]nvml.Device{gpu(true, true, "MIG-1")}, nil, ""},
		"mode pending":      {[]nvml.Device{gpu(false, false)}, []nvml.Device{gpu(false, true)}, "MIG mode changed"},
		"instance replaced": {[]nvml.Device{gpu(true, true, "MIG-1")}, []nvml.Device{gpu(true, true, "MIG-2")}, "MIG instances changed"},
		"instance added":    {[]nvml.Device{gpu(true, true, "MIG-1")}, []nvml.Device{gpu(true, true, "MIG-1", "MIG-2")}, "MIG instances changed"},
	} {
		if got := migChanged(tc.before, tc.now); (tc.want == "" && got != "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", name, got, tc.want)
		}
	}
}
