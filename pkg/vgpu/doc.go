// Package vgpu is gpuslice's domain core: how a GPU is cut into slices, the
// device IDs of those slices, the memory and compute limits a set of slices
// carries, and where a request for slices should be placed.
//
// It is pure: no I/O, no logging, no clocks. Callers hand it the GPUs they
// found and the health they observed, and get back decisions.
package vgpu
