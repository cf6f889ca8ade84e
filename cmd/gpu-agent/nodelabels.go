package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/pkg/labels"
)

// labelResync is how often the node's labels are checked and repaired.
const labelResync = 5 * time.Minute

// podPolicyRefresh is how often the node's pods' compute policy
// annotations are read.
const podPolicyRefresh = 30 * time.Second

// errNoCluster reports an agent with no Kubernetes client configuration.
var errNoCluster = errors.New("no --kubeconfig and not running in a cluster")

// kubeClient builds the agent's Kubernetes client from --kubeconfig, or
// the in-cluster configuration when it is empty.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
	default:
		return nil, errNoCluster
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "gpuslice-agent"
	return kubernetes.NewForConfig(cfg)
}

// syncLabels keeps the node's labels at desired until ctx ends: at once,
// then every labelResync, so a label someone removes comes back. Failures
// are logged and retried at the next round: labels must never stop the
// device plugin.
func syncLabels(ctx context.Context, w *labels.Writer, desired map[string]string, log *slog.Logger) {
	for {
		if _, err := w.Sync(ctx, desired); err != nil && ctx.Err() == nil {
			log.Error("node labels not applied", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(labelResync):
		}
	}
}
