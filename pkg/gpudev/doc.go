// Package gpudev is what a GPU backend reports, as plain types: devices,
// driver versions, health, samples, processes and per-cgroup memory
// limits, and the small Backend interface the agent reads GPUs through.
// It does no I/O: pkg/nvml implements Backend over go-nvml (cgo), and the
// fake GPU node implements it for tests and nodes without GPUs, so that
// the node model (pkg/node) can speak of GPUs without linking either.
package gpudev
