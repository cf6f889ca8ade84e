package gputop

import (
	"fmt"
	"net/url"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AgentSelector selects the chart's agent pods.
const AgentSelector = "app.kubernetes.io/name=gpuslice,app.kubernetes.io/component=agent"

// AgentNamespace is the namespace the README installs the chart in: the
// agents are looked for there unless told otherwise, since a tenant can
// run a DaemonSet of its own wearing the agents' labels in its namespace.
const AgentNamespace = "gpuslice-system"

// AgentTargets turns agent pods into Agents targets ("node=url") that
// reach each pod's metrics port through the API server's proxy at
// apiServer: the only address a kubeconfig gives. Pods not running, not
// on a node, without a container port named "metrics", not controlled by
// a DaemonSet, or outside namespace (unless it is empty) are left out and
// named in skipped. Labels and owner references are the tenants' to set
// in their own namespaces: a pod of theirs labelled as an agent must not
// speak for a node, so the agents' namespace is the default, and two
// candidates for one node are an error naming both rather than a guess.
func AgentTargets(pods []corev1.Pod, namespace, apiServer string) (targets, skipped []string, err error) {
	base := strings.TrimSuffix(apiServer, "/")
	byNode := map[string]string{}
	for _, p := range pods {
		port := metricsPort(p)
		if p.Status.Phase != corev1.PodRunning || p.Spec.NodeName == "" || port == 0 || p.DeletionTimestamp != nil || !daemonSetPod(p) ||
			(namespace != "" && p.Namespace != namespace) {
			skipped = append(skipped, p.Namespace+"/"+p.Name)
			continue
		}
		if other, dup := byNode[p.Spec.NodeName]; dup {
			return nil, nil, fmt.Errorf("two agent pods on node %s: %s and %s/%s; name the agents' namespace", p.Spec.NodeName, other, p.Namespace, p.Name)
		}
		byNode[p.Spec.NodeName] = p.Namespace + "/" + p.Name
		path := fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:%d/proxy/metrics",
			url.PathEscape(p.Namespace), url.PathEscape(p.Name), port)
		targets = append(targets, p.Spec.NodeName+"="+base+path)
	}
	sort.Strings(targets)
	return targets, skipped, nil
}

// daemonSetPod reports whether a DaemonSet controls the pod, as the
// chart's agents are.
func daemonSetPod(p corev1.Pod) bool {
	ref := metav1.GetControllerOf(&p)
	return ref != nil && ref.Kind == "DaemonSet" && strings.HasPrefix(ref.APIVersion, "apps/")
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
