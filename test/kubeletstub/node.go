package kubeletstub

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/gpuhealth"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Node is a test node: a fake GPU node, gpuslice's device plugin serving it
// and registered with a kubelet stand-in, and the stand-in's pod-resources
// API, all in a temp dir and torn down with the test.
type Node struct {
	Dir     string
	GPU     *fakegpu.Node
	Devices []nvml.Device
	Layout  *vgpu.Layout
	Plugin  *deviceplugin.Plugin
	// Health is the node's one record of GPU health, which the plugin
	// subscribes to, as in gpu-agent.
	Health       *gpuhealth.Monitor
	Kubelet      *Kubelet
	Connection   *Plugin
	PodResources *PodResources
	// PodResourcesSocket is where PodResources serves.
	PodResourcesSocket string
}

// StartNode builds and starts a Node with slices slices per GPU.
func StartNode(t testing.TB, cfg fakegpu.Config, slices int) *Node {
	t.Helper()
	return StartNodeWith(t, cfg, slices, nil)
}

// StartNodeWith is StartNode with the plugin's options changed by
// configure (nil: the defaults).
func StartNodeWith(t testing.TB, cfg fakegpu.Config, slices int, configure func(*deviceplugin.Options)) *Node {
	t.Helper()
	n := &Node{Dir: t.TempDir()}
	var err error
	if n.GPU, err = fakegpu.New(cfg); err != nil {
		t.Fatal(err)
	}
	if n.Devices, err = n.GPU.Devices(); err != nil {
		t.Fatal(err)
	}
	if n.Layout, err = deviceplugin.NewLayout(n.Devices, vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: slices}}); err != nil {
		t.Fatal(err)
	}
	if n.Kubelet, err = Start(n.Dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Kubelet.Stop)
	opts := deviceplugin.DefaultOptions()
	opts.PluginDir = n.Dir
	if configure != nil {
		configure(&opts)
	}
	if n.Plugin, err = deviceplugin.New(n.Layout, n.Devices, opts); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { _ = n.Plugin.Run(ctx); done <- struct{}{} }()
	n.Health = gpuhealth.New(n.Layout.UUIDs(), slog.New(slog.DiscardHandler))
	n.Health.Subscribe(n.Plugin.SetHealth)
	go func() { n.Health.Run(ctx, n.GPU, time.Second); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	wait, cancelWait := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelWait()
	if n.Connection, err = n.Kubelet.WaitPlugin(wait, "nvidia.com/vgpu"); err != nil {
		t.Fatal(err)
	}
	n.PodResourcesSocket = filepath.Join(n.Dir, "pod-resources.sock")
	if n.PodResources, err = n.Kubelet.ServePodResources(n.PodResourcesSocket); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.PodResources.Stop)
	return n
}
