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
	b, err := gpubackend.Open(gpubackend.Fake, file, nvml.DefaultOptions())
	if !gpubackend.FakeBuiltIn {
		// Built with nofakegpu (as the shipped image is): refused.
		if err == nil || gpubackend.CheckFakeFile(file) == nil {
			t.Errorf("a binary without the fake GPU node opened one: %v", err)
		}
		return
	}
	if err != nil || b.Watch == nil {
		t.Fatalf("Open(fake) = %+v, %v; want a node whose file is watched", b, err)
	}
	defer func() { _ = b.Close() }()
	if devs, err := b.Devices(); err != nil || len(devs) != 3 {
		t.Errorf("the fake node's devices: %d, %v; want 3", len(devs), err)
	}
	if _, err := gpubackend.Open(gpubackend.Fake, filepath.Join(t.TempDir(), "missing.yaml"), nvml.DefaultOptions()); err == nil {
		t.Error("a missing fake node file was accepted")
	}
	if err := gpubackend.CheckFakeFile(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("CheckFakeFile accepted a missing file")
	}
	o := nvml.DefaultOptions()
	o.LibraryPath = "/nonexistent/libnvidia-ml.so.1"
	if b, err := gpubackend.Open(gpubackend.NVML, "", o); err == nil || b.Watch != nil {
		t.Errorf("NVML without its library: %+v, %v; want an error", b, err)
	}
}
