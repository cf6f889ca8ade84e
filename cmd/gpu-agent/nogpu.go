package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"

	"golang.org/x/sync/errgroup"

	"github.com/gpuslice/gpuslice/internal/gpubackend"
	"github.com/gpuslice/gpuslice/pkg/exporter"
	"github.com/gpuslice/gpuslice/pkg/health"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// metricAgentNoGPU is exported, alone with the build, by an agent that
// found no GPU on its node.
const metricAgentNoGPU = "gpuslice_agent_no_gpu"

// idleWithoutGPUs is the agent on a node without GPUs (a DaemonSet
// selecting a node it should not, or a GPU node whose driver is not
// installed yet). It offers nothing to the kubelet, enforces nothing and
// touches no container; it says why in a warning and on /metrics
// (gpuslice_agent_no_gpu{reason} 1), stays ready so that rollouts go on
// instead of crash-looping, and looks again every interval: once GPUs are
// there it exits with an error, for the kubelet to start it afresh to
// serve them.
func idleWithoutGPUs(ctx context.Context, cfg Resolved, k kubeParts, reason string, cause error, probes *health.State, log *slog.Logger) error {
	lis, err := net.Listen("tcp", cfg.MetricsAddress)
	if err != nil {
		return fmt.Errorf("listen on --metrics-address: %w", err)
	}
	every := 15 * cfg.Health.ProbeInterval.Duration // 30 s by default
	log.Warn("no GPU on this node: nothing is offered or enforced; looking again", "reason", reason, "err", cause, "every", every)
	probes.Set(func() error { return nil })
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return exporter.Serve(ctx, lis, k.guard(noGPUHandler(reason)), cfg.WebConfigFile, log)
	})
	g.Go(func() error {
		return gpubackend.WaitForGPUs(ctx, func() (nvml.Backend, error) {
			b, _, err := openBackend(cfg, slog.New(slog.DiscardHandler))
			return b, err
		}, every)
	})
	return g.Wait()
}

// noGPUHandler serves /metrics (the agent's build and why it idles) and
// the probes.
func noGPUHandler(reason string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		fmt.Fprintf(w, "# HELP %s 1 when the agent found no GPU on its node and idles: it offers and enforces nothing (reason: no-driver, no NVIDIA driver library; no-device, a driver that lists no GPU). Absent on an agent serving GPUs.\n# TYPE %[1]s gauge\n%[1]s{reason=%q} 1\n", metricAgentNoGPU, reason)
		fmt.Fprintf(w, "# HELP gpuslice_build_info The agent's build; always 1.\n# TYPE gpuslice_build_info gauge\ngpuslice_build_info{goversion=%q,version=%q} 1\n", runtime.Version(), version)
	})
	for _, p := range []string{"/healthz", "/readyz"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	}
	return mux
}
