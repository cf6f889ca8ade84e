package draplugin_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	healthpb "k8s.io/kubelet/pkg/apis/dra-health/v1"

	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

// TestHealthTaintsTheDevice: an XID on a GPU taints its device in the
// ResourceSlice the real API server holds, with the effect its cause
// takes (NoSchedule for a recoverable XID: the scheduler gives it no new
// claims; NoExecute for a fatal one: its claims' pods are evicted), and
// reaches the kubelet's health stream; recovery
// removes the taint. The other GPU is never touched. The node publishes a
// device per slice too: the failing GPU's slice devices are tainted with it.
func TestHealthTaintsTheDevice(t *testing.T) {
	srv := apiserver.Start(t)
	cs := driverClient(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := startNode(ctx, t, cs, nodeName, 2, true)
	defer n.plugin.Stop()
	layout, _ := gpus(t, 2)
	sick, well := layout.GPUs()[1].UUID, layout.GPUs()[0].UUID
	for _, uuid := range []string{well, sick} {
		if err := n.plugin.SetHealth(ctx, nvml.Health{UUID: uuid, Healthy: true}); err != nil {
			t.Fatal(err)
		}
	}
	stream, err := healthpb.NewDRAResourceHealthClient(n.dial(t)).NodeWatchResources(ctx, &healthpb.NodeWatchResourcesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	waitHealth(t, stream, "gpu-1", healthpb.HealthStatus_HEALTHY)

	// A recoverable XID: NoSchedule. A fatal one: NoExecute, which stays
	// while the GPU is unhealthy whatever XID comes after.
	for _, step := range []struct {
		xid  uint64
		want string
	}{{94, "xid-94/NoSchedule"}, {79, "xid-79/NoExecute"}, {94, "xid-94/NoExecute"}} {
		if err := n.plugin.SetHealth(ctx, nvml.Health{UUID: sick, Reason: "xid", XID: step.xid}); err != nil {
			t.Fatal(err)
		}
		waitTaints(t, cs, taints("", step.want))
	}
	waitHealth(t, stream, "gpu-1", healthpb.HealthStatus_UNHEALTHY)

	if err := n.plugin.SetHealth(ctx, nvml.Health{UUID: sick, Healthy: true, Reason: nvml.ReasonRecovered}); err != nil {
		t.Fatal(err)
	}
	waitTaints(t, cs, taints("", ""))
	waitHealth(t, stream, "gpu-1", healthpb.HealthStatus_HEALTHY)
}

// taints is the taint value wanted on each device of GPU 0 and GPU 1,
// their slice devices included.
func taints(gpu0, gpu1 string) map[string]string {
	out := map[string]string{}
	for i, v := range []string{gpu0, gpu1} {
		out[dra.DeviceName(i)] = v
		for j := range 8 {
			out[dra.SliceDeviceName(i, j)] = v
		}
	}
	return out
}

// waitTaints waits until each device carries gpuslice's taint as
// "value/effect" ("" for none).
func waitTaints(t *testing.T, cs kubernetes.Interface, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got map[string]string
	for time.Now().Before(deadline) {
		list, err := cs.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
		if err == nil {
			got = map[string]string{}
			for _, s := range list.Items {
				for _, d := range s.Spec.Devices {
					got[d.Name] = ""
					for _, taint := range d.Taints {
						if taint.Key == dra.UnhealthyTaintKey {
							got[d.Name] = taint.Value + "/" + string(taint.Effect)
						}
					}
				}
			}
			if equal(got, want) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("taints %v, want %v", got, want)
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// waitHealth reads the health stream until device has status.
func waitHealth(t *testing.T, stream grpc.ServerStreamingClient[healthpb.NodeWatchResourcesResponse], device string, status healthpb.HealthStatus) {
	t.Helper()
	for range 20 {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range r.GetDevices() {
			if d.GetDevice().GetDeviceName() == device && d.GetHealth() == status {
				return
			}
		}
	}
	t.Fatalf("the health stream never said %s is %s", device, status)
}
