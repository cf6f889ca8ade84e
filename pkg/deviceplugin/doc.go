// Package deviceplugin serves a node's GPU slices to the kubelet over the
// device plugin v1beta1 gRPC API: it registers on the kubelet's socket,
// re-registers when the kubelet restarts, streams slice health, answers
// preferred-allocation questions from pkg/vgpu and tells the container
// runtime what an allocated container gets (visible GPUs, device nodes, CDI
// devices, slice limits, MPS limits).
//
// It does not watch GPUs itself: whoever owns the nvml.Backend feeds health
// in through SetHealth.
package deviceplugin
