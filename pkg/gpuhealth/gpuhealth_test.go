package gpuhealth_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/gpuhealth"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// A health watch that fails (NVML's event set broke) is started again
// after the retry, and reports once it works: one failure never ends XID
// reporting for good.
func TestRunRetries(t *testing.T) {
	t.Parallel()
	node, err := fakegpu.New(fakegpu.PresetConfig("A100-40GB", 1))
	if err != nil {
		t.Fatal(err)
	}
	devs, err := node.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if err := node.FailCall(fakegpu.CallWatchHealth, true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	reported := make(chan nvml.Health, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m := gpuhealth.New([]string{devs[0].UUID}, slog.New(slog.DiscardHandler))
		m.Subscribe(func(h nvml.Health) {
			select {
			case reported <- h:
			default:
			}
		})
		m.Run(ctx, node, 20*time.Millisecond)
	}()
	time.Sleep(100 * time.Millisecond) // several failed watches
	select {
	case h := <-reported:
		t.Fatalf("a failing watch reported %+v", h)
	default:
	}
	if err := node.FailCall(fakegpu.CallWatchHealth, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reported:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch never reported after the failure cleared")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return when its context ended")
	}
}

// TestOneRecordForEverySubscriber: the fake node's XIDs reach every
// subscriber (the front ends) in order, and the monitor's own record
// (the sampler's) says the same: the GPU's health, and each critical XID
// counted once per report, a second XID on a GPU already unhealthy too.
// A GPU the monitor was not given is neither recorded nor handed on.
func TestOneRecordForEverySubscriber(t *testing.T) {
	t.Parallel()
	node, err := fakegpu.New(fakegpu.PresetConfig("A100-40GB", 3))
	if err != nil {
		t.Fatal(err)
	}
	devs, err := node.Devices()
	if err != nil {
		t.Fatal(err)
	}
	// GPU 2 is not the monitor's (as a GPU left out of the layout).
	m := gpuhealth.New([]string{devs[0].UUID, devs[1].UUID}, slog.New(slog.DiscardHandler))
	var mu sync.Mutex
	got := map[int][]nvml.Health{}
	for i := range 2 {
		m.Subscribe(func(h nvml.Health) {
			mu.Lock()
			defer mu.Unlock()
			got[i] = append(got[i], h)
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx, node, time.Hour)
	for _, xid := range []uint64{79, 48} {
		if err := node.InjectXID(1, xid); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return m.XIDs(devs[1].UUID)[xid] == 1 })
	}
	if err := node.InjectXID(2, 79); err != nil {
		t.Fatal(err)
	}
	if h := m.Health(devs[1].UUID); h.Healthy || h.XID != 48 {
		t.Errorf("GPU 1 = %+v, want unhealthy by XID 48", h)
	}
	if h := m.Health(devs[0].UUID); !h.Healthy {
		t.Errorf("GPU 0 = %+v, want healthy", h)
	}
	if h := m.Health(devs[2].UUID); h.Healthy || h.Reason != "" {
		t.Errorf("GPU 2, not the monitor's = %+v, want unknown (unhealthy, no reason)", h)
	}
	if x := m.XIDs(devs[1].UUID); len(x) != 2 {
		t.Errorf("XIDs = %v, want 79 and 48 once each", x)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got[0]) == 0 || fmt.Sprint(got[0]) != fmt.Sprint(got[1]) {
		t.Errorf("subscribers were handed different reports:\n%v\n%v", got[0], got[1])
	}
	for _, h := range got[0] {
		if h.UUID == devs[2].UUID {
			t.Errorf("a report of a GPU not the monitor's was handed on: %+v", h)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMIGInstanceReports: reports of MIG instances, which come and go with
// their GPU's layout, are kept though the monitor was not built with
// them; an instance is usable while it and its GPU are healthy.
func TestMIGInstanceReports(t *testing.T) {
	t.Parallel()
	m := gpuhealth.New([]string{"GPU-a"}, slog.New(slog.DiscardHandler))
	var got []nvml.Health
	m.Subscribe(func(h nvml.Health) { got = append(got, h) })
	if !m.Healthy("MIG-1", "GPU-a") {
		t.Error("an instance nothing was reported of is not as healthy as its GPU")
	}
	m.Report(nvml.Health{UUID: "MIG-1", Parent: "GPU-a", Reason: nvml.ReasonXID, XID: 94})
	m.Report(nvml.Health{UUID: "GPU-zzz", Reason: nvml.ReasonXID, XID: 79})                  // not the monitor's: ignored
	m.Report(nvml.Health{UUID: "MIG-9", Parent: "GPU-zzz", Reason: nvml.ReasonXID, XID: 94}) // nor an instance of such a GPU
	if m.Healthy("MIG-1", "GPU-a") || !m.Healthy("MIG-2", "GPU-a") || !m.Healthy("GPU-a", "") {
		t.Error("an XID on MIG-1 must make it, and only it, unusable")
	}
	if len(got) != 1 || got[0].UUID != "MIG-1" {
		t.Errorf("subscribers got %+v, want the instance's report alone", got)
	}
	m.Report(nvml.Health{UUID: "GPU-a", Reason: nvml.ReasonLost})
	if m.Healthy("MIG-2", "GPU-a") {
		t.Error("an instance of a lost GPU is usable")
	}
}
