package quota

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collectors are the controller's own metrics.
func (c *Controller) collectors() []prometheus.Collector {
	m := &c.metrics
	return []prometheus.Collector{m.cycles, m.promErrors, m.evictions, m.annotations, m.quotaUpdates, m.duration, m.queries, m.recorded, m.unknown, &namespaceCollector{c: c}}
}

// namespaceCollector exports each namespace's quota state as of the last
// cycle.
type namespaceCollector struct{ c *Controller }

var (
	descUsedSlices  = prometheus.NewDesc("gpuslice_quota_used_slices", "Slices the namespace's pods hold.", []string{"namespace"}, nil)
	descLimit       = prometheus.NewDesc("gpuslice_quota_slice_limit", "The limit the controller's ResourceQuota sets on the namespace's slices.", []string{"namespace"}, nil)
	descUsedHours   = prometheus.NewDesc("gpuslice_quota_used_gpu_hours", "GPU-hours the namespace used over its budget window.", []string{"namespace"}, nil)
	descBudget      = prometheus.NewDesc("gpuslice_quota_budget_gpu_hours", "The namespace's GPU-hour budget per window.", []string{"namespace"}, nil)
	descExhausted   = prometheus.NewDesc("gpuslice_quota_budget_exhausted", "1 while the namespace's GPU-hour budget is spent and new GPU pods are rejected.", []string{"namespace"}, nil)
	descIdle        = prometheus.NewDesc("gpuslice_quota_idle_pods", "Pods of the namespace found idle by its GPUQuota.", []string{"namespace"}, nil)
	descClaimSlices = prometheus.NewDesc("gpuslice_quota_used_claim_slices", "Slices the namespace's DRA claims hold (a claim not yet allocated counts as a whole GPU per device).", []string{"namespace"}, nil)
	descClaimLimit  = prometheus.NewDesc("gpuslice_quota_claim_device_limit", "The limit the controller's ResourceQuota sets on the namespace's claim devices of a device class.", []string{"namespace", "device_class"}, nil)
	descAdminClaims = prometheus.NewDesc("gpuslice_quota_admin_access_claims", "The namespace's claims holding gpuslice's devices with admin access (monitoring): they hold no share and no cap applies to them.", []string{"namespace"}, nil)
)

func (n *namespaceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUsedSlices, descLimit, descUsedHours, descBudget, descExhausted, descIdle, descClaimSlices, descClaimLimit, descAdminClaims} {
		ch <- d
	}
}

func (n *namespaceCollector) Collect(ch chan<- prometheus.Metric) {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	for ns, r := range n.c.report {
		ch <- prometheus.MustNewConstMetric(descUsedSlices, prometheus.GaugeValue, r.usedSlices, ns)
		ch <- prometheus.MustNewConstMetric(descUsedHours, prometheus.GaugeValue, r.usedHours, ns)
		ch <- prometheus.MustNewConstMetric(descIdle, prometheus.GaugeValue, r.idle, ns)
		if r.limit != nil {
			ch <- prometheus.MustNewConstMetric(descLimit, prometheus.GaugeValue, *r.limit, ns)
		}
		if r.claimSlices >= 0 {
			ch <- prometheus.MustNewConstMetric(descClaimSlices, prometheus.GaugeValue, r.claimSlices, ns)
			ch <- prometheus.MustNewConstMetric(descAdminClaims, prometheus.GaugeValue, r.adminClaims, ns)
		}
		for class, n := range r.claimLimits {
			ch <- prometheus.MustNewConstMetric(descClaimLimit, prometheus.GaugeValue, float64(n), ns, class)
		}
		if r.budget != nil {
			ex := 0.0
			if r.exhausted {
				ex = 1
			}
			ch <- prometheus.MustNewConstMetric(descBudget, prometheus.GaugeValue, *r.budget, ns)
			ch <- prometheus.MustNewConstMetric(descExhausted, prometheus.GaugeValue, ex, ns)
		}
	}
}
