package gputop

import (
	"fmt"
	"net/url"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// AgentSelector selects the chart's agent pods.
const AgentSelector = "app.kubernetes.io/name=gpuslice,app.kubernetes.io/component=agent"

// AgentTargets turns agent pods into Agents targets ("node=url") that
// reach each pod's metrics port through the API server's proxy at
// apiServer: the only address a kubeconfig gives. Pods not running, not
// on a node, or without a container port named "metrics" are left out and
// named in skipped.
func AgentTargets(pods []corev1.Pod, apiServer string) (targets, skipped []string) {
	base := strings.TrimSuffix(apiServer, "/")
	for _, p := range pods {
		port := metricsPort(p)
		if p.Status.Phase != corev1.PodRunning || p.Spec.NodeName == "" || port == 0 || p.DeletionTimestamp != nil {
			skipped = append(skipped, p.Namespace+"/"+p.Name)
			continue
		}
		path := fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:%d/proxy/metrics",
			url.PathEscape(p.Namespace), url.PathEscape(p.Name), port)
		targets = append(targets, p.Spec.NodeName+"="+base+path)
	}
	sort.Strings(targets)
	return targets, skipped
}

func metricsPort(p corev1.Pod) int32 {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == "metrics" {
				return port.ContainerPort
			}
		}
	}
	return 0
}

// ServiceProxy is the address of a Service's port through the API
// server's proxy, from "namespace/name[:port]" (port defaults to 9090,
// Prometheus').
func ServiceProxy(apiServer, service string) (string, error) {
	ns, name, ok := strings.Cut(service, "/")
	if !ok || ns == "" || name == "" {
		return "", fmt.Errorf("service %q: want NAMESPACE/NAME[:PORT]", service)
	}
	port := "9090"
	if n, p, ok := strings.Cut(name, ":"); ok {
		name, port = n, p
	}
	if name == "" || port == "" {
		return "", fmt.Errorf("service %q: want NAMESPACE/NAME[:PORT]", service)
	}
	return fmt.Sprintf("%s/api/v1/namespaces/%s/services/%s:%s/proxy", strings.TrimSuffix(apiServer, "/"),
		url.PathEscape(ns), url.PathEscape(name), url.PathEscape(port)), nil
}
