package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/pkg/labels"
)

// labelResync is how often the node's labels are checked and repaired.
const labelResync = 5 * time.Minute

// labelRetry is the first wait after a failed label sync; it doubles up
// to labelResync.
const labelRetry = 5 * time.Second

// podPolicyRefresh is how often the node's pods' compute policy
// annotations are read.
const podPolicyRefresh = 30 * time.Second

// kubeClient builds the agent's Kubernetes client from --kubeconfig, or
// the in-cluster configuration when it is empty.
func kubeClient(kubeconfig string) (*kube.Client, error) {
	return kube.New(kubeconfig)
}

// syncLabels keeps the node's labels at desired until ctx ends: at once,
// then every labelResync, so a label someone removes comes back. Failures
// are logged and retried at the next round: labels must never stop the
// device plugin.
func syncLabels(ctx context.Context, w *labels.Writer, desired map[string]string, log *slog.Logger) {
	// After a failure (the Node not registered yet, the API server away)
	// retry soon, backing off to the resync period.
	retry := labelRetry
	for {
		wait := labelResync
		if _, err := w.Sync(ctx, desired); err != nil && ctx.Err() == nil {
			log.Error("node labels not applied", "err", err, "retry_in", retry)
			wait, retry = retry, min(2*retry, labelResync)
		} else {
			retry = labelRetry
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
