// Package gpumodel simulates how one GPU shares its time between
// processes, in virtual time, so that the compute throttle can be judged
// against GPU behaviour that is not ideal and not driven by the test
// machine's CPU.
//
// Each process submits kernels of a fixed duration into its own queue of
// bounded depth; a frozen process submits nothing, but what it queued
// keeps running. The GPU runs one context at a time and switches between
// contexts with queued work on a time slice, paying a switch cost; kernels
// are preempted at the slice's end and resume later. What NVML would report
// is sampled per sample period, reported only once the period has ended
// (so readers lag) and truncated to integer percents, with optional noise.
// Independently of those readings, the model counts the kernels each
// process completed: the judge of any accuracy claim.
//
// A GPU in MIG mode (MIG) is several such engines, one per instance: each
// instance has its own SMs, so it time-slices only its own contexts and
// work on one never slows another. Each instance counts the time its SMs
// ran kernels, as GPU performance monitoring does, naming no process.
//
// The model is pure: no clocks, no I/O. Time moves only through Advance.
package gpumodel
