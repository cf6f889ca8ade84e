package kueuecheck

import (
	"fmt"
	"sort"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
)

// Uncovered names, sorted, the namespace's LocalQueues through which work
// escapes the check: their ClusterQueue is missing, or lists no
// AdmissionCheck this controller serves (or lists one only on some
// flavors). known is false while the caches have not listed Kueue's
// objects yet.
func (c *Controller) Uncovered(namespace string) (queues []string, known bool) {
	for _, synced := range c.synced {
		if !synced() {
			return nil, false
		}
	}
	served := c.servedChecks()
	objs, err := c.lqs.ByNamespace(namespace).List(labels.Everything())
	if err != nil {
		return nil, false
	}
	for _, o := range objs {
		lq, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		cqName, _, _ := unstructured.NestedString(lq.Object, "spec", "clusterQueue")
		if why := c.coverage(cqName, served); why != "" {
			queues = append(queues, fmt.Sprintf("%s (ClusterQueue %s %s)", lq.GetName(), cqName, why))
		}
	}
	sort.Strings(queues)
	return queues, true
}

// coverage says why a ClusterQueue does not hold its work to a served
// check, or "" when it does.
func (c *Controller) coverage(name string, served map[string]bool) string {
	obj, err := c.cqs.Get(name)
	if err != nil {
		return "not found"
	}
	cq, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return "not readable"
	}
	checks, _, _ := unstructured.NestedSlice(cq.Object, "spec", "admissionChecksStrategy", "admissionChecks")
	partial := false
	for _, ch := range checks {
		m, _ := ch.(map[string]any)
		if name, _ := m["name"].(string); !served[name] {
			continue
		}
		if flavors, _ := m["onFlavors"].([]any); len(flavors) > 0 {
			partial = true
			continue
		}
		return ""
	}
	if partial {
		return "lists gpuslice's AdmissionCheck only on some flavors"
	}
	return "lists no AdmissionCheck gpuslice serves"
}

// servedChecks are the names of the AdmissionChecks naming this
// controller.
func (c *Controller) servedChecks() map[string]bool {
	out := map[string]bool{}
	served, _ := c.served()
	for _, ac := range served {
		out[ac.GetName()] = true
	}
	return out
}

// served lists the AdmissionChecks whose controllerName is this
// controller's.
func (c *Controller) served() ([]*unstructured.Unstructured, error) {
	objs, err := c.checks.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list AdmissionChecks: %w", err)
	}
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if ac, ok := o.(*unstructured.Unstructured); ok {
			if name, _, _ := unstructured.NestedString(ac.Object, "spec", "controllerName"); name == c.opts.ControllerName {
				out = append(out, ac)
			}
		}
	}
	return out, nil
}
