// Command workload is a fake GPU workload: a real process that holds some
// GPU memory and wants some share of a GPU's compute, for the fake GPU node
// (test/fakegpu) to serve. It asks for GPU time only while it runs: frozen
// by its cgroup, it asks for none, exactly as a frozen CUDA host thread
// launches no kernels. SIGUSR1 pauses its GPU work and SIGUSR2 resumes it,
// as a program that idles its GPU between bursts.
//
//	workload --dir /run/gpuslice/fakegpu --memory-mib 4096 --demand 0.3
//
// An allocation the fake driver refuses (a cgroup memory limit) ends the
// workload with exit status 2 and a CUDA-like out-of-memory message.
//
// The GPU defaults to the first of $NVIDIA_VISIBLE_DEVICES, as the device
// plugin sets it; the directory to $GPUSLICE_FAKE_WORKLOAD_DIR.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpuslice/gpuslice/test/fakegpu/protocol"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "workload: %v\n", err)
		os.Exit(2)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("workload", flag.ContinueOnError)
	dir := fs.String("dir", os.Getenv("GPUSLICE_FAKE_WORKLOAD_DIR"), "fake GPU workload directory")
	gpu := fs.String("gpu", firstVisible(), "GPU UUID")
	memMiB := fs.Uint64("memory-mib", 1024, "GPU memory to hold, MiB")
	demand := fs.Float64("demand", 0.5, "share of a whole GPU wanted, 0..1")
	tick := fs.Duration("tick", 20*time.Millisecond, "how often the GPU time asked for is published")
	duration := fs.Duration("duration", 0, "exit after this long (0: run until signalled)")
	growMiB := fs.Uint64("grow-to-mib", 0, "after --grow-after, ask for this much GPU memory in all (0: never grow)")
	growAfter := fs.Duration("grow-after", time.Second, "when to grow to --grow-to-mib")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *dir == "":
		return errors.New("--dir or $GPUSLICE_FAKE_WORKLOAD_DIR is required")
	case *gpu == "":
		return errors.New("--gpu or $NVIDIA_VISIBLE_DEVICES is required")
	case *demand < 0 || *demand > 1:
		return fmt.Errorf("--demand %g is outside 0..1", *demand)
	case *tick <= 0:
		return errors.New("--tick must be positive")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	pause := make(chan os.Signal, 4)
	signal.Notify(pause, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(pause)
	paused := false
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	pid := os.Getpid()
	defer func() { _ = os.Remove(filepath.Join(*dir, strconv.Itoa(pid)+".json")) }()

	state := protocol.WorkloadState{GPU: *gpu, MemoryBytes: *memMiB << 20, Demand: *demand}
	if err := protocol.WriteWorkloadState(*dir, pid, state); err != nil {
		return err
	}
	// Time is accounted every millisecond and published every tick. Time
	// spent frozen or stopped is not time the workload ran, so after a
	// pause at most two milliseconds are credited, however long it was away.
	// A workload the machine keeps off the CPU is slowed the same way: the
	// kernel leaves no trace the workload could read of which it was (no
	// schedstats here; cgroup.freeze and cgroup.events keep no time of a
	// write), so tests that run workloads judge what a busy CPU cannot
	// fake (upper bounds, proportions, duties), and the accuracy claim is
	// judged in virtual time (test/accuracy).
	const step = time.Millisecond
	account := time.NewTicker(step)
	defer account.Stop()
	publish := time.NewTicker(*tick)
	defer publish.Stop()
	var grow <-chan time.Time
	if *growMiB > 0 {
		t := time.NewTimer(*growAfter)
		defer t.Stop()
		grow = t.C
	}
	oom := filepath.Join(*dir, strconv.Itoa(pid)+protocol.OOMSuffix)
	defer func() { _ = os.Remove(oom) }()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-account.C:
			ran := min(now.Sub(last), 2*step)
			last = now
			if !paused {
				state.RequestedNanos += int64(float64(ran) * *demand)
			}
		case sig := <-pause:
			paused = sig == syscall.SIGUSR1
		case <-grow:
			state.MemoryBytes = *growMiB << 20
			if err := protocol.WriteWorkloadState(*dir, pid, state); err != nil {
				return err
			}
		case <-publish.C:
			// The fake driver refused an allocation: fail as a CUDA
			// program does on cudaErrorMemoryAllocation.
			if msg, err := os.ReadFile(oom); err == nil { //nolint:gosec // our own file
				return fmt.Errorf("CUDA error: %s", strings.TrimSpace(string(msg)))
			}
			if err := protocol.WriteWorkloadState(*dir, pid, state); err != nil {
				return err
			}
		}
	}
}

func firstVisible() string {
	v, _, _ := strings.Cut(os.Getenv("NVIDIA_VISIBLE_DEVICES"), ",")
	return v
}
