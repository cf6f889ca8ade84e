package gpubackend_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNoFakeGPU: the shipped image's binaries are built with the nofakegpu
// tag: they link no part of the fake GPU node, and asking one for it is
// one clear error before anything starts.
func TestNoFakeGPU(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"../../cmd/gpu-agent", "../../cmd/gpu-dra-driver"} {
		out, err := exec.Command("go", "list", "-tags", "nofakegpu", "-deps", cmd).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", cmd, err)
		}
		if strings.Contains(string(out), "/internal/fakegpu") {
			t.Errorf("%s built with nofakegpu still links the fake GPU node", cmd)
		}
		out, err = exec.Command("go", "list", "-deps", cmd).Output()
		if err != nil || !strings.Contains(string(out), "/internal/fakegpu") {
			t.Errorf("%s built without the tag lacks the fake GPU node (demo, tests): %v", cmd, err)
		}
	}
	bin := filepath.Join(t.TempDir(), "gpu-agent")
	if out, err := exec.Command("go", "build", "-tags", "nofakegpu", "-o", bin, "../../cmd/gpu-agent").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// A binary that wrongly accepted would start serving: bounded, so the
	// failure is a wrong answer, not a hung test.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := exec.CommandContext(ctx, bin, "--gpu-backend=fake")
	run.Env = append(os.Environ(), "NODE_NAME=")
	out, err := run.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "built without the fake GPU node") {
		t.Errorf("gpu-agent --gpu-backend=fake without the fake: %v\n%s", err, out)
	}
}
