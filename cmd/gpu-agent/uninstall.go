package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/pkg/uninstall"
)

// runUninstall is `gpu-agent uninstall`, the chart's pre-delete hook: it
// wires flags to uninstall.Run.
func runUninstall(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gpu-agent uninstall", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o uninstall.Options
	var kubeconfig string
	var timeout time.Duration
	fs.StringVar(&o.Namespace, "namespace", "", "namespace of the agent's DaemonSet (required)")
	fs.StringVar(&o.DaemonSet, "daemonset", "", "name of the agent's DaemonSet (required)")
	fs.BoolVar(&o.GFD, "gfd-labels", true, "the agents wrote the GFD-compatible labels: remove them too")
	fs.StringVar(&o.DRADaemonSet, "dra-daemonset", "", "name of the DRA driver's DaemonSet, when it runs: deleted too, then its ResourceSlices")
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig `file`; in-cluster config when empty")
	fs.DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the agents to stop")
	fs.Usage = func() {
		fmt.Fprint(stdout, "Usage: gpu-agent uninstall --namespace NS --daemonset NAME [flags]\n\n"+
			"Deletes the agent's DaemonSet, waits for its pods to stop (they thaw what\n"+
			"they froze and remove their sockets), then removes the agents' node labels.\n"+
			"With --dra-daemonset, the DRA driver's DaemonSet goes too, then its ResourceSlices.\n\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitConfig
	}
	if fs.NArg() > 0 || o.Namespace == "" || o.DaemonSet == "" || timeout <= 0 {
		fmt.Fprintln(stderr, "gpu-agent uninstall: --namespace and --daemonset are required, a positive --timeout, and no arguments")
		return exitConfig
	}
	o.DRADriver = contract.DRADriverName
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	client, err := kube.New(kubeconfig)
	if err != nil {
		fmt.Fprintf(stderr, "gpu-agent uninstall: %v\n", err)
		return exitConfig
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	n, err := uninstall.Run(ctx, client, o, log)
	if err != nil {
		log.Error("uninstall failed", "err", err)
		return exitFailed
	}
	log.Info("uninstalled", "nodes_relabelled", n)
	return exitOK
}
