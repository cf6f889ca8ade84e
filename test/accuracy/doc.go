// Package accuracy judges the compute throttle against a realistic GPU
// model (internal/fakegpu/gpumodel) in virtual time: greedy tenants share one
// GPU, the agent's controller steers them from lagged, truncated NVML
// readings through the same throttle cycle and sample averaging the agent
// uses, and each tenant's share is judged by the kernels it completed,
// which the controller never sees. Mutations (an open-loop controller, a
// sensor that over-reads, a sensor that lags) show that the judge catches
// a broken controller.
package accuracy
