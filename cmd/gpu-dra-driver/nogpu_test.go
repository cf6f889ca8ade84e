package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/health"
)

// TestDriverWithoutGPUsIdles: on a node whose driver lists no GPU the DRA
// driver, like the agent, neither crash-loops nor publishes anything: it
// is ready, creates no plugin socket, and exits to be restarted once GPUs
// appear.
func TestDriverWithoutGPUsIdles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fake := filepath.Join(dir, "fake.yaml")
	if err := os.WriteFile(fake, []byte("gpus: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	plugins := filepath.Join(dir, "plugins")
	cfg, err := loadConfig([]string{"--gpu-backend=fake", "--fake-config=" + fake, "--node-name=n1", "--cdi-dir=" + filepath.Join(dir, "cdi"),
		"--kubelet-plugin-dir=" + plugins, "--kubelet-registrar-dir=" + filepath.Join(dir, "registry"),
		"--dra-prepared-claims=" + filepath.Join(dir, "prepared.json"), "--health-probe-interval=100ms"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	probes := health.NewState("starting")
	d := &driverProc{}
	done := make(chan error, 1)
	go func() {
		done <- serveDriver(context.Background(), cfg, probes, slog.New(slog.NewTextHandler(lockedWriter{d}, nil)))
	}()
	deadline := time.Now().Add(10 * time.Second)
	for probes.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("never ready without GPUs: %v", probes.Ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("the driver stopped on a node without GPUs: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if !strings.Contains(d.logs(), `msg="no GPU on this node: nothing is published or prepared; looking again" reason=no-device`) {
		t.Errorf("no warning saying why:\n%s", d.logs())
	}
	if _, err := os.Stat(plugins); err == nil {
		t.Errorf("the driver made its plugin directory %s on a node without GPUs", plugins)
	}
	if err := os.WriteFile(fake, []byte("preset: A100-40GB\ncount: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "1 GPUs appeared on this node") {
			t.Errorf("once a GPU appeared the driver returned %v; want it to exit to serve it", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the driver never noticed the GPU that appeared")
	}
}
