package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/test/cgrouptest"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
	"github.com/gpuslice/gpuslice/test/promtest"
)

const cgroupV2 = "/sys/fs/cgroup/unified"

// showMetrics runs a fake GPU workload for two of the demo's pods, each in
// a cgroup shaped like its container where the host allows, and prints what
// the agent's /metrics says about them.
func showMetrics(ctx context.Context, out io.Writer, addr, workDir string, allocs map[string]kubeletstub.Allocation) error {
	bin, err := fakegpu.BuildWorkload(workDir)
	if err != nil {
		return err
	}
	base := filepath.Join(cgroupV2, fmt.Sprintf("gpuslice-demo-%d", os.Getpid()))
	defer func() { _ = cgrouptest.RemoveTree(base, 5*time.Second) }()
	inCgroups := true
	for i, w := range []struct {
		pod    string
		mib    int
		demand string
	}{{"training", 12288, "0.6"}, {"notebook-a", 2048, "0.1"}} {
		gpu := allocs[w.pod].Response.Envs["NVIDIA_VISIBLE_DEVICES"]
		cmd := exec.Command(bin, "--dir", workDir, "--gpu", gpu, "--memory-mib", strconv.Itoa(w.mib), "--demand", w.demand)
		if err := cmd.Start(); err != nil {
			return err
		}
		defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
		cid := fmt.Sprintf("%064x", i+1)
		cg := filepath.Join(base, "kubepods", "burstable", "pod"+kubeletstub.PodUID(w.pod), cid)
		if inCgroups {
			err := os.MkdirAll(cg, 0o755)
			if err == nil {
				err = os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
			}
			if err != nil {
				inCgroups = false
				fmt.Fprintf(out, "   (no writable cgroup v2 at %s: %v; the workloads run outside pod cgroups and count as unattributed)\n", cgroupV2, err)
			}
		}
	}
	// Let the agent see both and gather a few seconds of use.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mfs, err := promtest.Fetch("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		if n, _ := promtest.Value(mfs, "gpuslice_container_memory_used_bytes", map[string]string{"pod": "notebook-a"}); n > 0 || !inCgroups {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the agent never attributed the workloads")
		}
		time.Sleep(250 * time.Millisecond)
	}
	first, t0 := mustScrape(addr)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(3 * time.Second):
	}
	second, t1 := mustScrape(addr)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "   pod\tslices\tcompute limit\tGPU use (busy s/s)\tmemory used / limit")
	for _, pod := range []string{"training", "notebook-a"} {
		l := map[string]string{"pod": pod}
		slices, _ := promtest.Value(second, "gpuslice_container_slices", l)
		limit, _ := promtest.Value(second, "gpuslice_container_compute_limit_ratio", l)
		b0, _ := promtest.Value(first, "gpuslice_container_gpu_busy_seconds_total", l)
		b1, _ := promtest.Value(second, "gpuslice_container_gpu_busy_seconds_total", l)
		used, _ := promtest.Value(second, "gpuslice_container_memory_used_bytes", l)
		memLimit, _ := promtest.Value(second, "gpuslice_container_memory_limit_bytes", l)
		fmt.Fprintf(tw, "   %s\t%.0f\t%.3f\t%.2f\t%.0f / %.0f MiB\n", pod, slices, limit, (b1-b0)/t1.Sub(t0).Seconds(), used/(1<<20), memLimit/(1<<20))
	}
	_ = tw.Flush()
	gpu0 := map[string]string{"gpu": "0"}
	util, _ := promtest.Value(second, "gpuslice_device_utilization_ratio", gpu0)
	mem, _ := promtest.Value(second, "gpuslice_device_memory_used_bytes", gpu0)
	unattributed, _ := promtest.Value(second, "gpuslice_agent_unattributed_processes", gpu0)
	fmt.Fprintf(out, "   GPU 0: utilization %.2f, memory used %.0f MiB, unattributed processes %.0f (curl %s/metrics for everything)\n", util, mem/(1<<20), unattributed, addr)
	return nil
}

func mustScrape(addr string) (map[string]*dto.MetricFamily, time.Time) {
	mfs, err := promtest.Fetch("http://" + addr + "/metrics")
	if err != nil {
		return nil, time.Now()
	}
	return mfs, time.Now()
}

// showIsolation runs two greedy workloads on GPU 1 under the strict
// policy, prints what each got against its limit (by its own count of the
// GPU time it asked for while it ran, and by the agent's metrics), then
// grows one past its memory limit and prints how the watchdog stopped it.
// running is a demo workload process.
type running struct {
	pod     string
	cmd     *exec.Cmd
	err     chan error
	started time.Time
}

func showIsolation(ctx context.Context, out io.Writer, addr, workDir string, allocs map[string]kubeletstub.Allocation) error {
	bin, err := fakegpu.BuildWorkload(workDir)
	if err != nil {
		return err
	}
	base := filepath.Join(cgroupV2, fmt.Sprintf("gpuslice-demo-isolation-%d", os.Getpid()))
	defer func() { _ = cgrouptest.RemoveTree(base, 5*time.Second) }()
	var ws []running
	defer func() {
		for _, r := range ws {
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			<-r.err
		}
	}()
	for i, w := range []struct {
		pod  string
		args []string
	}{
		{"notebook-b", []string{"--memory-mib", "4096", "--demand", "1", "--grow-to-mib", "16384", "--grow-after", "14s"}},
		{"inference", []string{"--memory-mib", "8192", "--demand", "1"}},
	} {
		gpu := allocs[w.pod].Response.Envs["NVIDIA_VISIBLE_DEVICES"]
		cmd := exec.Command(bin, append([]string{"--dir", workDir, "--gpu", gpu}, w.args...)...)
		if err := cmd.Start(); err != nil {
			return err
		}
		r := running{pod: w.pod, cmd: cmd, err: make(chan error, 1), started: time.Now()}
		go func() { r.err <- cmd.Wait() }()
		ws = append(ws, r)
		cg := filepath.Join(base, "kubepods", "burstable", "pod"+kubeletstub.PodUID(w.pod), fmt.Sprintf("%064x", 16+i))
		err := os.MkdirAll(cg, 0o750)
		if err == nil {
			err = os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
		}
		if err != nil {
			fmt.Fprintf(out, "   (no writable cgroup v2 at %s: %v; nothing can be throttled or attributed here: run make demo as root)\n", cgroupV2, err)
			return nil
		}
	}
	if err := showShares(ctx, out, addr, workDir, ws); err != nil {
		return err
	}
	return showHogStopped(ctx, out, addr, ws[0])
}

// showShares prints each workload's own GPU work per second next to the
// agent's reading and its throttle.
func showShares(ctx context.Context, out io.Writer, addr, workDir string, ws []running) error {
	// The throttle starts strict containers at their limit; give the
	// controller a few windows, then measure.
	if !wait(ctx, 5*time.Second) {
		return ctx.Err()
	}
	first, t0 := mustScrape(addr)
	asked0 := askedFor(workDir, ws[0].cmd.Process.Pid, ws[1].cmd.Process.Pid)
	if !wait(ctx, 6*time.Second) {
		return ctx.Err()
	}
	second, t1 := mustScrape(addr)
	asked1 := askedFor(workDir, ws[0].cmd.Process.Pid, ws[1].cmd.Process.Pid)
	span := t1.Sub(t0).Seconds()
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "   pod\tlimit\tits own work (GPU s/s)\tagent's reading (busy s/s)\tduty\tfrozen")
	for i, w := range ws {
		l := map[string]string{"pod": w.pod}
		limit, _ := promtest.Value(second, "gpuslice_container_compute_limit_ratio", l)
		b0, _ := promtest.Value(first, "gpuslice_container_gpu_busy_seconds_total", l)
		b1, _ := promtest.Value(second, "gpuslice_container_gpu_busy_seconds_total", l)
		duty, _ := promtest.Value(second, "gpuslice_enforcement_compute_duty_ratio", l)
		frozen, _ := promtest.Value(second, "gpuslice_enforcement_throttled_seconds_total", l)
		fmt.Fprintf(tw, "   %s\t%.3f\t%.2f\t%.2f\t%.2f\t%.1f s\n", w.pod, limit, (asked1[i]-asked0[i]).Seconds()/span, (b1-b0)/span, duty, frozen)
	}
	_ = tw.Flush()
	fmt.Fprintln(out, "   both want the whole GPU; under strict each runs only its share and the rest of GPU 1 stays idle")
	return nil
}

// showHogStopped waits for the watchdog to stop the workload that grows
// past its memory limit.
func showHogStopped(ctx context.Context, out io.Writer, addr string, hog running) error {
	fmt.Fprintln(out, "   notebook-b now grows to 16 GiB of GPU memory, past its 10 GiB limit:")
	grew := hog.started.Add(14 * time.Second) // --grow-after
	select {
	case <-hog.err:
		hog.err <- nil // for the deferred wait
	case <-time.After(20 * time.Second):
		return errors.New("the memory hog was not stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
	after, _ := mustScrape(addr)
	kills, _ := promtest.Value(after, "gpuslice_enforcement_kills_total", map[string]string{"pod": "notebook-b"})
	fmt.Fprintf(out, "   the watchdog stopped it (%s) %.1f s after it grew; gpuslice_enforcement_kills_total{pod=\"notebook-b\"} = %.0f; inference runs on\n",
		hog.cmd.ProcessState, time.Since(grew).Seconds(), kills)
	return nil
}

// askedFor reads how much GPU time each workload has asked for so far,
// from the state it publishes.
func askedFor(dir string, pids ...int) []time.Duration {
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		data, err := os.ReadFile(filepath.Join(dir, strconv.Itoa(pid)+".json"))
		if err != nil {
			continue
		}
		var s fakegpu.WorkloadState
		if json.Unmarshal(data, &s) == nil {
			out[i] = time.Duration(s.RequestedNanos)
		}
	}
	return out
}

func wait(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
