package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gpuslice/gpuslice/test/fakegpu"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
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
	defer removeTree(base)
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
		mfs, err := scrape(addr)
		if err != nil {
			return err
		}
		if n, _ := value(mfs, "gpuslice_container_memory_used_bytes", map[string]string{"pod": "notebook-a"}); n > 0 || !inCgroups {
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
		slices, _ := value(second, "gpuslice_container_slices", l)
		limit, _ := value(second, "gpuslice_container_compute_limit_ratio", l)
		b0, _ := value(first, "gpuslice_container_gpu_busy_seconds_total", l)
		b1, _ := value(second, "gpuslice_container_gpu_busy_seconds_total", l)
		used, _ := value(second, "gpuslice_container_memory_used_bytes", l)
		memLimit, _ := value(second, "gpuslice_container_memory_limit_bytes", l)
		fmt.Fprintf(tw, "   %s\t%.0f\t%.3f\t%.2f\t%.0f / %.0f MiB\n", pod, slices, limit, (b1-b0)/t1.Sub(t0).Seconds(), used/(1<<20), memLimit/(1<<20))
	}
	_ = tw.Flush()
	gpu0 := map[string]string{"gpu": "0"}
	util, _ := value(second, "gpuslice_device_utilization_ratio", gpu0)
	mem, _ := value(second, "gpuslice_device_memory_used_bytes", gpu0)
	unattributed, _ := value(second, "gpuslice_agent_unattributed_processes", gpu0)
	fmt.Fprintf(out, "   GPU 0: utilization %.2f, memory used %.0f MiB, unattributed processes %.0f (curl %s/metrics for everything)\n", util, mem/(1<<20), unattributed, addr)
	return nil
}

func mustScrape(addr string) (map[string]*dto.MetricFamily, time.Time) {
	mfs, err := scrape(addr)
	if err != nil {
		return nil, time.Now()
	}
	return mfs, time.Now()
}

func scrape(addr string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(bytes.NewReader(body))
}

// value returns the first sample of family name whose labels include want.
func value(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
next:
	for _, m := range mfs[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
				continue next
			}
		}
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue(), true
		}
		return m.GetGauge().GetValue(), true
	}
	return 0, false
}

// removeTree removes a cgroup tree bottom-up; its processes are gone by now.
func removeTree(dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i])
	}
}
