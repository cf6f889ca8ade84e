// Package exporter turns the sampler's latest snapshot into Prometheus
// metrics on an explicit registry, one collector per concern (devices,
// slices, containers, enforcement, the agent itself), and serves them with
// /healthz and /readyz. Scrapes only read the snapshot: they never call
// NVML or the kubelet.
package exporter
