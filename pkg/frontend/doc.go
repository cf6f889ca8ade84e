// Package frontend serializes a node's two front ends to its GPUs, the
// device plugin (nvidia.com/vgpu, in gpu-agent) and the DRA driver
// (gpu-dra-driver), which never share a GPU. Each checks what the other
// holds and records what it hands out under one file lock, so that a vgpu
// admission and a claim prepare that overlap by milliseconds cannot both
// pass. It also keeps the device plugin's recent grants: the kubelet
// lists a vgpu container in pod-resources only after Allocate returns, and
// a claim prepared in that window must see it.
package frontend
