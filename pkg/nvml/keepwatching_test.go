package nvml_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// A health watch that fails (NVML's event set broke) is started again
// after the retry, and reports once it works: one failure never ends XID
// reporting for good.
func TestKeepWatchingHealthRetries(t *testing.T) {
	t.Parallel()
	node, err := fakegpu.New(fakegpu.PresetConfig("A100-40GB", 1))
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
		nvml.KeepWatchingHealth(ctx, node, func(h nvml.Health) {
			select {
			case reported <- h:
			default:
			}
		}, 20*time.Millisecond, slog.New(slog.DiscardHandler))
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
		t.Fatal("KeepWatchingHealth did not return when its context ended")
	}
}
