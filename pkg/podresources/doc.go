// Package podresources is gpuslice's one long-lived client of the kubelet's
// pod-resources v1 API: which container holds which device IDs of a
// resource. It survives kubelet restarts (the connection redials with a
// bounded backoff) and accepts the large answers of busy nodes.
package podresources
