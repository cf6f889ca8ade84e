// Package labels computes the node labels gpu-agent maintains: the
// GFD-compatible set (nvidia.com/gpu.*, nvidia.com/cuda.*), so nodeAffinity
// rules written for NVIDIA's GPU Feature Discovery keep working, and
// gpuslice's own (gpuslice.io/*). It also computes the patch that brings a
// node's labels to that set, removing stale labels the agent owns and
// never touching others, and Writer applies it to the agent's own node.
package labels
