package gpubackend_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

func TestOpenFake(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(file, []byte("preset: H100-80GB\ncount: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, node, err := gpubackend.Open("fake", file, nvml.DefaultOptions())
	if err != nil || node == nil {
		t.Fatalf("Open(fake) = %v, %v", node, err)
	}
	defer func() { _ = b.Close() }()
	if devs, err := b.Devices(); err != nil || len(devs) != 3 {
		t.Errorf("the fake node's devices: %d, %v; want 3", len(devs), err)
	}
	if _, _, err := gpubackend.Open("fake", filepath.Join(t.TempDir(), "missing.yaml"), nvml.DefaultOptions()); err == nil {
		t.Error("a missing fake node file was accepted")
	}
	o := nvml.DefaultOptions()
	o.LibraryPath = "/nonexistent/libnvidia-ml.so.1"
	if _, node, err := gpubackend.Open(gpubackend.NVML, "", o); err == nil || node != nil {
		t.Errorf("NVML without its library: %v, %v; want an error and no fake node", node, err)
	}
}
