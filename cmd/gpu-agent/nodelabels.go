package main

import (
	"time"

	"github.com/gpuslice/gpuslice/pkg/kube"
)

// podPolicyRefresh is how often the node's pods' compute policy
// annotations are read.
const podPolicyRefresh = 30 * time.Second

// kubeClient builds the agent's Kubernetes client from --kubeconfig, or
// the in-cluster configuration when it is empty.
func kubeClient(kubeconfig string) (*kube.Client, error) {
	return kube.New(kubeconfig)
}
