// Command gpu-check is the real-GPU kit: on a machine with an NVIDIA GPU,
// CUDA and PyTorch it runs gpu-agent on real NVML against the kubelet
// stand-in, puts PyTorch loops in pod-shaped cgroups with the environment
// their slices give them, and records what the agent did, judged by the
// loops' own completed iterations, never by NVML:
//
//   - whether cgroup freezing works on the machine;
//   - an uncapped baseline, a lone tenant's overhead under strict, shares
//     under strict 30/70 and 10/30/60 and the work retained, each in three
//     windows with their range, and every loop's work per second;
//   - four tenants at 25 % under burst and Jain's fairness index;
//   - a latency victim's p50/p99 step time alone and beside a greedy
//     neighbour under strict, time-slicing and (where it starts) MPS;
//   - the agent's per-container GPU memory against nvidia-smi's per-process
//     view;
//   - a memory hog stopped by the watchdog, or refused by the driver tier,
//     the memory tier the agent found, and the GPU's MIG mode (read only).
//
// It writes a Markdown report with its provenance. --mode=dry runs the
// same steps on this machine against the fake libnvidia-ml and fake
// workloads, so CI keeps the kit working (make gpu-check-dry). Everything
// it runs is built beforehand (make gpu-check-build), because the GPU
// machine has no network.
//
//	gpu-check --agent bin/gpu-agent --report docs/gpu-validation.md
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
)

// version is the commit the kit was built from (-ldflags -X main.version).
var version = "dev"

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "exec":
			// gpu-check exec <cgroup dir> <program> <args...>: join the
			// cgroup, then become the program, so it never runs outside it.
			if err := execIn(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "gpu-check exec: %v\n", err)
				os.Exit(2)
			}
			return
		case "spin":
			spin()
		}
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "gpu-check: %v\n", err)
		os.Exit(1)
	}
}

// options are gpu-check's flags.
type options struct {
	mode, agent, report, python string
	settle, measure, budget     time.Duration
}

func run(args []string) error {
	var o options
	fs := flag.NewFlagSet("gpu-check", flag.ContinueOnError)
	fs.StringVar(&o.mode, "mode", "real", "real (NVIDIA GPU, CUDA, PyTorch) or dry (fake libnvidia-ml and workloads, for CI)")
	fs.StringVar(&o.agent, "agent", "bin/gpu-agent", "gpu-agent binary")
	fs.StringVar(&o.report, "report", "docs/gpu-validation.md", "Markdown report to write")
	fs.StringVar(&o.python, "python", "python3", "Python with PyTorch (real mode)")
	fs.DurationVar(&o.settle, "settle", 8*time.Second, "time each scenario settles before it is measured")
	fs.DurationVar(&o.measure, "measure", 5*time.Second, "length of each of a scenario's measured windows")
	fs.DurationVar(&o.budget, "budget", 8*time.Minute, "the whole run's time limit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.mode != "real" && o.mode != "dry" {
		return fmt.Errorf("--mode %q: want real or dry", o.mode)
	}
	if _, err := os.Stat(o.agent); err != nil {
		return fmt.Errorf("agent binary: %w (make gpu-check-build builds it)", err)
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it creates cgroups and freezes them")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.budget)
	defer cancel()
	c, err := newCheck(ctx, o)
	if err != nil {
		return err
	}
	defer c.close()
	c.runAll()
	if err := c.writeReport(o.report); err != nil {
		return err
	}
	fmt.Printf("gpu-check: report written to %s\n", o.report)
	if c.failed() {
		return errors.New("some steps failed; see the report")
	}
	return nil
}

// execIn moves this process into a cgroup and executes a program there.
func execIn(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: gpu-check exec <cgroup dir> <program> [args...]")
	}
	if err := os.WriteFile(filepath.Join(args[0], "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return fmt.Errorf("join cgroup: %w", err)
	}
	path := args[1]
	if !strings.Contains(path, "/") {
		p, err := lookPath(path)
		if err != nil {
			return err
		}
		path = p
	}
	return syscall.Exec(path, args[1:], os.Environ())
}

func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", name)
}

// spin burns CPU until killed: the freezer check's subject.
func spin() {
	n := 0
	for {
		n++
		if n < 0 {
			fmt.Println(n)
		}
	}
}
