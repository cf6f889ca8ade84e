package labels

import (
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

func node(t *testing.T, cfg fakegpu.Config, slices int) ([]nvml.Device, nvml.SystemInfo, *vgpu.Layout) {
	t.Helper()
	n, err := fakegpu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := n.Devices()
	sys, _ := n.System()
	var gpus []vgpu.GPU
	for _, d := range devs {
		gpus = append(gpus, vgpu.GPU{UUID: d.UUID, Index: d.Index, Model: d.Model, MemoryBytes: d.MemoryBytes})
	}
	l, err := vgpu.NewLayout(gpus, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: slices}})
	if err != nil {
		t.Fatal(err)
	}
	return devs, sys, l
}

func TestForBuiltInNode(t *testing.T) {
	t.Parallel()
	devs, sys, l := node(t, fakegpu.DefaultConfig(), 8)
	want := map[string]string{
		"nvidia.com/gpu.product":                  "NVIDIA-A100-SXM4-40GB",
		"nvidia.com/gpu.memory":                   "40960",
		"nvidia.com/gpu.count":                    "4",
		"nvidia.com/gpu.family":                   "ampere",
		"nvidia.com/gpu.compute.major":            "8",
		"nvidia.com/gpu.compute.minor":            "0",
		"nvidia.com/cuda.driver-version.full":     "570.124.06",
		"nvidia.com/cuda.driver-version.major":    "570",
		"nvidia.com/cuda.driver-version.minor":    "124",
		"nvidia.com/cuda.driver-version.revision": "06",
		"nvidia.com/cuda.runtime-version.major":   "12",
		"nvidia.com/cuda.runtime-version.minor":   "8",
		"nvidia.com/cuda.runtime-version.full":    "12.8",
		"nvidia.com/cuda.driver.major":            "570",
		"nvidia.com/cuda.driver.minor":            "124",
		"nvidia.com/cuda.driver.rev":              "06",
		"nvidia.com/cuda.runtime.major":           "12",
		"nvidia.com/cuda.runtime.minor":           "8",
		"nvidia.com/gpu.replicas":                 "8",
		"nvidia.com/gpu.sharing-strategy":         "time-slicing",
		"nvidia.com/mig.capable":                  "true",
		"nvidia.com/mps.capable":                  "false",
		"nvidia.com/gpu.mode":                     "compute",
		"nvidia.com/gpu.machine":                  "DGX-A100",
		"gpuslice.io/slices-per-gpu":              "8",
		"gpuslice.io/slice-memory":                "5120Mi",
		"gpuslice.io/slices":                      "32",
		"gpuslice.io/enforcement":                 "freezer",
	}
	opts := Options{GFD: true, Enforcement: "freezer", GPUMode: GPUMode([]string{"0x030200", "0x030200"}), Machine: "DGX A100\n"}
	if diff := cmp.Diff(want, For(devs, sys, l, opts)); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	// GFD's -SHARED product suffix, MPS, and an unknown machine.
	opts = Options{GFD: true, SharedProduct: true, MPS: true}
	got := For(devs, sys, l, opts)
	for k, v := range map[string]string{
		"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-SHARED", "nvidia.com/gpu.sharing-strategy": "mps",
		"nvidia.com/mps.capable": "true", "nvidia.com/gpu.machine": "unknown", "nvidia.com/gpu.mode": "",
	} {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	// One slice per GPU is no sharing; a GPU without MIG says so.
	one, sys1, l1 := node(t, fakegpu.Config{GPUs: []fakegpu.GPUConfig{{Model: "Tesla T4", MemoryMiB: 15360, ComputeCapability: "7.5"}}}, 1)
	got = For(one, sys1, l1, Options{GFD: true})
	if got["nvidia.com/gpu.replicas"] != "1" || got["nvidia.com/gpu.sharing-strategy"] != "none" || got["nvidia.com/mig.capable"] != "false" {
		t.Errorf("unshared T4: %v", got)
	}
	// Where GFD already runs, only gpuslice's own labels.
	for k := range For(devs, sys, l, Options{GFD: false}) {
		if !strings.HasPrefix(k, OwnPrefix) {
			t.Errorf("GFD off, yet %s is set", k)
		}
	}
}

func TestForMixedNode(t *testing.T) {
	t.Parallel()
	devs, sys, l := node(t, fakegpu.Config{GPUs: []fakegpu.GPUConfig{{Preset: "H100-80GB"}, {Preset: "A100-40GB"}, {Preset: "A100-40GB"}}}, 4)
	got := For(devs, sys, l, Options{GFD: true})
	// Described by the most common model, as GFD describes a node by one.
	if got["nvidia.com/gpu.product"] != "NVIDIA-A100-SXM4-40GB" || got["nvidia.com/gpu.family"] != "ampere" || got["nvidia.com/gpu.count"] != "3" {
		t.Errorf("mixed node described as %v", got)
	}
	if got["gpuslice.io/gpu.mixed"] != "true" || got["gpuslice.io/gpu.count.NVIDIA-A100-SXM4-40GB"] != "2" || got["gpuslice.io/gpu.count.NVIDIA-H100-80GB-HBM3"] != "1" {
		t.Errorf("per-model counts missing: %v", got)
	}
	h, sysH, lh := node(t, fakegpu.PresetConfig("H200-141GB", 1), 7)
	if got := For(h, sysH, lh, Options{GFD: true}); got["nvidia.com/gpu.product"] != "NVIDIA-H200" || got["nvidia.com/gpu.family"] != "hopper" || got["gpuslice.io/gpu.mixed"] != "" {
		t.Errorf("H200 node = %v", got)
	}
	if got := For(nil, sys, l, Options{GFD: true}); len(got) != 0 {
		t.Errorf("no GPUs, labels %v", got)
	}
}

var labelValue = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)

func TestGPUMode(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"0x030200": "compute", "0x030000\n": "graphics", "0x038000": "unknown", "": "unknown"} {
		if got := GPUMode([]string{in}); got != want {
			t.Errorf("GPUMode(%q) = %q, want %q", in, got, want)
		}
	}
	if got := GPUMode(nil); got != "unknown" {
		t.Errorf("GPUMode(nil) = %q", got)
	}
}

func TestValue(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"NVIDIA-A100-SXM4-40GB":         "NVIDIA-A100-SXM4-40GB",
		"Tesla V100/SXM2 (16GB)":        "Tesla-V100-SXM2--16GB",
		"-leading-and-trailing-":        "leading-and-trailing",
		"é":                             "",
		strings.Repeat("a", 70):         strings.Repeat("a", 63),
		strings.Repeat("a", 62) + "--b": strings.Repeat("a", 62),
	} {
		if got := Value(in); got != want {
			t.Errorf("Value(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzValue(f *testing.F) {
	for _, s := range []string{"NVIDIA H100 80GB HBM3", "570.124.06", "-x-", "a/b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v := Value(s)
		if len(v) > 63 || !labelValue.MatchString(v) {
			t.Fatalf("Value(%q) = %q is not a valid label value", s, v)
		}
		if Value(v) != v {
			t.Fatalf("Value is not idempotent on %q", v)
		}
	})
}

func TestFamily(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		major, minor int
		want         string
	}{{9, 0, "hopper"}, {8, 0, "ampere"}, {8, 6, "ampere"}, {8, 9, "ada-lovelace"}, {7, 5, "turing"}, {7, 0, "volta"}, {10, 0, "blackwell"}, {6, 1, "pascal"}, {2, 0, "undefined"}} {
		if got := Family(tc.major, tc.minor); got != tc.want {
			t.Errorf("Family(%d.%d) = %q, want %q", tc.major, tc.minor, got, tc.want)
		}
	}
}

func TestPatch(t *testing.T) {
	t.Parallel()
	current := map[string]string{
		"kubernetes.io/hostname":     "gpu-1",
		"nvidia.com/gpu.product":     "NVIDIA-A100-SXM4-40GB",
		"nvidia.com/gpu.count":       "4",
		"nvidia.com/gfd.timestamp":   "1700000000",
		"gpuslice.io/slices-per-gpu": "8",
		"gpuslice.io/gpu.mixed":      "true",
	}
	desired := map[string]string{
		"nvidia.com/gpu.product":     "NVIDIA-A100-SXM4-40GB",
		"nvidia.com/gpu.count":       "3",
		"gpuslice.io/slices-per-gpu": "8",
		"gpuslice.io/slices":         "24",
	}
	want := map[string]any{
		"nvidia.com/gpu.count":  "3",
		"gpuslice.io/slices":    "24",
		"gpuslice.io/gpu.mixed": nil, // ours and stale
		// kubernetes.io/hostname and nvidia.com/gfd.timestamp are not ours.
	}
	if diff := cmp.Diff(want, Patch(current, desired, true)); diff != "" {
		t.Errorf("GFD on (-want +got)\n%s", diff)
	}
	// With GFD off, GFD's labels are GFD's: never removed.
	got := Patch(current, map[string]string{"gpuslice.io/slices-per-gpu": "8"}, false)
	if diff := cmp.Diff(map[string]any{"gpuslice.io/gpu.mixed": nil}, got); diff != "" {
		t.Errorf("GFD off (-want +got)\n%s", diff)
	}
	if got := Patch(desired, desired, true); len(got) != 0 {
		t.Errorf("no change, patch %v", got)
	}
}
