// Command workload is a fake GPU workload: a real process that holds some
// GPU memory and wants some share of a GPU's compute, for the fake GPU node
// (internal/fakegpu) to serve. It asks for GPU time only while it runs: frozen
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

	"github.com/gpuslice/gpuslice/internal/fakegpu/protocol"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "workload: %v\n", err)
		os.Exit(2)
	}
}

// flags are the workload's settings.
type flags struct {
	dir, gpu             string
	memMiB, growMiB      uint64
	demand               float64
	tick, duration, grow time.Duration
}

func parseFlags(args []string) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("workload", flag.ContinueOnError)
	fs.StringVar(&f.dir, "dir", os.Getenv("GPUSLICE_FAKE_WORKLOAD_DIR"), "fake GPU workload directory")
	fs.StringVar(&f.gpu, "gpu", firstVisible(), "GPU UUID")
	fs.Uint64Var(&f.memMiB, "memory-mib", 1024, "GPU memory to hold, MiB")
	fs.Float64Var(&f.demand, "demand", 0.5, "share of a whole GPU wanted, 0..1")
	fs.DurationVar(&f.tick, "tick", 20*time.Millisecond, "how often the GPU time asked for is published")
	fs.DurationVar(&f.duration, "duration", 0, "exit after this long (0: run until signalled)")
	fs.Uint64Var(&f.growMiB, "grow-to-mib", 0, "after --grow-after, ask for this much GPU memory in all (0: never grow)")
	fs.DurationVar(&f.grow, "grow-after", time.Second, "when to grow to --grow-to-mib")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	switch {
	case f.dir == "":
		return f, errors.New("--dir or $GPUSLICE_FAKE_WORKLOAD_DIR is required")
	case f.gpu == "":
		return f, errors.New("--gpu or $NVIDIA_VISIBLE_DEVICES is required")
	case f.demand < 0 || f.demand > 1:
		return f, fmt.Errorf("--demand %g is outside 0..1", f.demand)
	case f.tick <= 0:
		return f, errors.New("--tick must be positive")
	}
	return f, nil
}

func run(args []string) error {
	f, err := parseFlags(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Before the state is published: a pause sent once the workload is
	// seen must never find SIGUSR1 at its default (terminate).
	pause := make(chan os.Signal, 4)
	signal.Notify(pause, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(pause)
	if f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.duration)
		defer cancel()
	}
	pid := os.Getpid()
	defer func() { _ = os.Remove(filepath.Join(f.dir, strconv.Itoa(pid)+".json")) }()
	state := protocol.WorkloadState{GPU: f.gpu, MemoryBytes: f.memMiB << 20, Demand: f.demand}
	if err := protocol.WriteWorkloadState(f.dir, pid, state); err != nil {
		return err
	}
	oom := filepath.Join(f.dir, strconv.Itoa(pid)+protocol.OOMSuffix)
	defer func() { _ = os.Remove(oom) }()
	return work(ctx, f, pid, state, oom, pause)
}

// work runs the workload until ctx ends: GPU time is accounted every
// millisecond and published every tick. Time spent frozen or stopped is
// not time the workload ran, so after a pause at most two milliseconds are
// credited, however long it was away. A workload the machine keeps off the
// CPU is slowed the same way: the kernel leaves no trace the workload
// could read of which it was (no schedstats here; cgroup.freeze and
// cgroup.events keep no time of a write), so tests that run workloads
// judge what a busy CPU cannot fake (upper bounds, proportions, duties),
// and the accuracy claim is judged in virtual time (test/accuracy).
func work(ctx context.Context, f flags, pid int, state protocol.WorkloadState, oom string, pause <-chan os.Signal) error {
	paused := false
	const step = time.Millisecond
	account := time.NewTicker(step)
	defer account.Stop()
	publish := time.NewTicker(f.tick)
	defer publish.Stop()
	var grow <-chan time.Time
	if f.growMiB > 0 {
		t := time.NewTimer(f.grow)
		defer t.Stop()
		grow = t.C
	}
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-account.C:
			ran := min(now.Sub(last), 2*step)
			last = now
			if !paused {
				state.RequestedNanos += int64(float64(ran) * f.demand)
			}
		case sig := <-pause:
			paused = sig == syscall.SIGUSR1
		case <-grow:
			state.MemoryBytes = f.growMiB << 20
			if err := protocol.WriteWorkloadState(f.dir, pid, state); err != nil {
				return err
			}
		case <-publish.C:
			// The fake driver refused an allocation: fail as a CUDA
			// program does on cudaErrorMemoryAllocation.
			if msg, err := os.ReadFile(oom); err == nil { //nolint:gosec // our own file
				return fmt.Errorf("CUDA error: %s", strings.TrimSpace(string(msg)))
			}
			if err := protocol.WriteWorkloadState(f.dir, pid, state); err != nil {
				return err
			}
		}
	}
}

func firstVisible() string {
	v, _, _ := strings.Cut(os.Getenv("NVIDIA_VISIBLE_DEVICES"), ",")
	return v
}
