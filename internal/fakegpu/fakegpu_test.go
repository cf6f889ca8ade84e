package fakegpu

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

func TestPresets(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		preset   string
		model    string
		memBytes uint64
		ccMajor  int
	}{
		"a100 40":  {"A100-40GB", "NVIDIA A100-SXM4-40GB", 40960 * mib, 8},
		"a100 80":  {"A100-80GB", "NVIDIA A100-SXM4-80GB", 81920 * mib, 8},
		"h100 80":  {"H100-80GB", "NVIDIA H100 80GB HBM3", 81559 * mib, 9},
		"h200 141": {"H200-141GB", "NVIDIA H200", 143771 * mib, 9},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for _, count := range []int{1, 8} {
				n, err := New(PresetConfig(tc.preset, count))
				if err != nil {
					t.Fatal(err)
				}
				devs, err := n.Devices()
				if err != nil {
					t.Fatal(err)
				}
				if len(devs) != count {
					t.Fatalf("%d devices, want %d", len(devs), count)
				}
				uuids := map[string]bool{}
				for i, d := range devs {
					if d.Index != i || d.Minor != i || d.Model != tc.model || d.MemoryBytes != tc.memBytes || d.ComputeMajor != tc.ccMajor {
						t.Errorf("device %d = %+v", i, d)
					}
					if !strings.HasPrefix(d.UUID, "GPU-") || len(d.UUID) != 40 || uuids[d.UUID] {
						t.Errorf("device %d uuid %q is malformed or repeated", i, d.UUID)
					}
					uuids[d.UUID] = true
				}
			}
		})
	}
}

func TestDefaultConfigIsFourA100(t *testing.T) {
	t.Parallel()
	n, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := n.Devices()
	if len(devs) != 4 || devs[0].Model != "NVIDIA A100-SXM4-40GB" {
		t.Fatalf("default node = %+v", devs)
	}
	sys, err := n.System()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(nvml.SystemInfo{DriverVersion: "570.124.06", CUDADriverVersion: 12080}, sys); diff != "" {
		t.Errorf("System() (-want +got)\n%s", diff)
	}
}

func TestSeedChangesUUIDs(t *testing.T) {
	t.Parallel()
	a, _ := New(Config{Preset: "A100-40GB", Count: 1, Seed: "node-a"})
	b, _ := New(Config{Preset: "A100-40GB", Count: 1, Seed: "node-b"})
	da, _ := a.Devices()
	db, _ := b.Devices()
	if da[0].UUID == db[0].UUID {
		t.Fatal("different seeds gave the same UUID")
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		yaml    string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		"preset": {yaml: "preset: H100-80GB\ncount: 2\n"},
		"mixed gpus": {
			yaml: `
gpus:
  - preset: A100-40GB
  - model: Custom GPU
    memoryMiB: 1024
    computeCapability: "7.5"
    uuid: GPU-custom
driverVersion: "550.54.15"
cudaVersion: "12.4"
faults:
  gpus:
    - index: 1
      xid: 79
  failCalls: [system]
`,
			check: func(t *testing.T, c Config) {
				n, err := New(c)
				if err != nil {
					t.Fatal(err)
				}
				devs, _ := n.Devices()
				if devs[1].UUID != "GPU-custom" || devs[1].MemoryBytes != 1024*mib || devs[1].ComputeMajor != 7 || devs[1].ComputeMinor != 5 {
					t.Errorf("custom gpu = %+v", devs[1])
				}
				if _, err := n.System(); !errors.Is(err, ErrInjected) {
					t.Errorf("System() error = %v, want injected", err)
				}
			},
		},
		"no gpu": {yaml: "gpus: []\n", check: func(t *testing.T, c Config) {
			n, err := New(c)
			if err != nil {
				t.Fatal(err)
			}
			if devs, err := n.Devices(); err != nil || len(devs) != 0 {
				t.Errorf("a node without GPUs lists %v, %v", devs, err)
			}
		}},
		"no gpu but a preset": {yaml: "preset: A100-40GB\ngpus: []\n", wantErr: "count 0 is outside 1..16"},
		"unknown field":       {yaml: "preset: A100-40GB\ncount: 1\ncolour: red\n", wantErr: "unknown field"},
		"unknown preset":      {yaml: "preset: V100\ncount: 1\n", wantErr: `unknown preset "V100"`},
		"count zero":          {yaml: "preset: A100-40GB\n", wantErr: "count 0 is outside 1..16"},
		"count too big":       {yaml: "preset: A100-40GB\ncount: 17\n", wantErr: "outside 1..16"},
		"both forms":          {yaml: "preset: A100-40GB\ncount: 1\ngpus: [{preset: A100-40GB}]\n", wantErr: "not both"},
		"nothing":             {yaml: "{}\n", wantErr: "set preset"},
		"incomplete gpu":      {yaml: "gpus: [{model: x}]\n", wantErr: "set a preset, or model"},
		"bad capability":      {yaml: "gpus: [{model: x, memoryMiB: 1, computeCapability: nine}]\n", wantErr: "not major.minor"},
		"duplicate uuid":      {yaml: "gpus: [{preset: A100-40GB, uuid: GPU-a}, {preset: A100-40GB, uuid: GPU-a}]\n", wantErr: "duplicate uuid"},
		"fault out of range":  {yaml: "preset: A100-40GB\ncount: 2\nfaults: {gpus: [{index: 2, xid: 79}]}\n", wantErr: "node has gpus 0..1"},
		"empty fault":         {yaml: "preset: A100-40GB\ncount: 2\nfaults: {gpus: [{index: 1}]}\n", wantErr: "set xid or lost"},
		"unknown call":        {yaml: "preset: A100-40GB\ncount: 2\nfaults: {failCalls: [allocate]}\n", wantErr: `unknown call "allocate"`},
		"bad cuda":            {yaml: "preset: A100-40GB\ncount: 2\ncudaVersion: twelve\n", wantErr: "cudaVersion"},
		"not yaml":            {yaml: "preset: [\n", wantErr: "parse fake GPU config"},
		"bad numa node":       {yaml: "gpus: [{preset: A100-40GB, numaNode: 64}]\n", wantErr: "numaNode 64 is outside 0..63"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse([]byte(tc.yaml))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse() error = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

// watcher collects WatchHealth reports.
type watcher struct {
	ch chan nvml.Health
}

func watch(t *testing.T, n *Node) *watcher {
	t.Helper()
	w := &watcher{ch: make(chan nvml.Health, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.WatchHealth(ctx, func(h nvml.Health) { w.ch <- h }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchHealth() = %v", err)
		}
	})
	return w
}

func (w *watcher) next(t *testing.T) nvml.Health {
	t.Helper()
	select {
	case h := <-w.ch:
		return h
	case <-time.After(5 * time.Second):
		t.Fatal("no health report within 5s")
		return nvml.Health{}
	}
}

func TestFaultInjection(t *testing.T) {
	t.Parallel()
	n, err := New(PresetConfig("A100-40GB", 3))
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := n.Devices()
	w := watch(t, n)
	for i := range 3 {
		if h := w.next(t); h != (nvml.Health{UUID: devs[i].UUID, Healthy: true}) {
			t.Fatalf("initial report %d = %+v", i, h)
		}
	}

	if err := n.InjectXID(1, 79); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(nvml.Health{UUID: devs[1].UUID, Reason: nvml.ReasonXID, XID: 79}, w.next(t)); diff != "" {
		t.Errorf("after XID (-want +got)\n%s", diff)
	}
	if err := n.Lose(2); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(nvml.Health{UUID: devs[2].UUID, Reason: nvml.ReasonLost}, w.next(t)); diff != "" {
		t.Errorf("after loss (-want +got)\n%s", diff)
	}
	got, err := n.Devices()
	if err == nil || len(got) != 2 {
		t.Errorf("Devices() with a lost GPU = %d devices, %v; want 2 and an error", len(got), err)
	}
	if err := n.Recover(1); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(nvml.Health{UUID: devs[1].UUID, Healthy: true, Reason: nvml.ReasonRecovered}, w.next(t)); diff != "" {
		t.Errorf("after recovery (-want +got)\n%s", diff)
	}
	if err := n.FailCall(CallDevices, true); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Devices(); !errors.Is(err, ErrInjected) {
		t.Errorf("Devices() error = %v, want injected", err)
	}
	if err := n.FailCall(CallDevices, false); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Devices(); err == nil {
		t.Error("Devices() still succeeds with gpu 2 lost")
	}
	// Bad injections change nothing.
	before := n.Faults()
	for _, err := range []error{n.InjectXID(9, 79), n.InjectXID(0, 0), n.Lose(-1), n.Recover(3), n.FailCall("nope", true)} {
		if err == nil {
			t.Error("bad injection accepted")
		}
	}
	if diff := cmp.Diff(before, n.Faults()); diff != "" {
		t.Errorf("bad injections changed faults (-before +after)\n%s", diff)
	}
}

func TestWatchHealthInjectedFailureAndClose(t *testing.T) {
	t.Parallel()
	n, _ := New(Config{Preset: "A100-40GB", Count: 1, Faults: Faults{FailCalls: []string{CallWatchHealth}}})
	if err := n.WatchHealth(context.Background(), func(nvml.Health) {}); !errors.Is(err, ErrInjected) {
		t.Fatalf("WatchHealth() = %v, want injected error", err)
	}
	_ = n.FailCall(CallWatchHealth, false)
	done := make(chan error, 1)
	go func() { done <- n.WatchHealth(context.Background(), func(nvml.Health) {}) }()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WatchHealth did not return after Close")
	}
}

func TestWatchFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "node.yaml")
	write := func(s string) {
		t.Helper()
		// Write and rename, as editors and kubectl-mounted ConfigMaps do.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("preset: A100-40GB\ncount: 2\n")
	cfg, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := New(cfg)
	devs, _ := n.Devices()
	w := watch(t, n)
	w.next(t)
	w.next(t)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- WatchFile(ctx, path, n, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() { cancel(); <-done })
	// The watcher starts asynchronously: rewrite until it applies.
	deadline := time.After(10 * time.Second)
	for applied := false; !applied; {
		write("preset: A100-40GB\ncount: 2\nfaults: {gpus: [{index: 0, xid: 48}]}\n")
		select {
		case h := <-w.ch:
			if diff := cmp.Diff(nvml.Health{UUID: devs[0].UUID, Reason: nvml.ReasonXID, XID: 48}, h); diff != "" {
				t.Fatalf("(-want +got)\n%s", diff)
			}
			applied = true
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("fault from file never applied")
		}
	}
	// A broken file and a changed inventory are ignored; the fault stays.
	write("preset: [\n")
	write("preset: A100-40GB\ncount: 3\n")
	write("preset: A100-40GB\ncount: 2\n")
	if diff := cmp.Diff(nvml.Health{UUID: devs[0].UUID, Healthy: true, Reason: nvml.ReasonRecovered}, w.next(t)); diff != "" {
		t.Fatalf("after clearing faults (-want +got)\n%s", diff)
	}
}
