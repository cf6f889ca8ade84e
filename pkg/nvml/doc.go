// Package nvml is gpuslice's one boundary to the GPU. Backend is the small
// interface the rest of the agent uses (device inventory, driver versions,
// health); NVML implements it over github.com/NVIDIA/go-nvml. The stateful
// fake in internal/fakegpu implements the same interface for tests and for
// nodes without GPUs.
package nvml
