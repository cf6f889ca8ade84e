package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/gpuslice/gpuslice/pkg/dra"
)

// TestDRASizedDevices: with the driver publishing devices of 3 slices
// (--sized-devices=3) and the chart's class vgpu-3.gpuslice.io mapping
// nvidia.com/vgpu-3 to them, each pod asking for nvidia.com/vgpu-3: 1 gets
// 3 slices of one GPU from the real scheduler, whatever the other GPU has
// free; on two GPUs of 4 slices two such pods run, on different GPUs, and
// a third stays Pending although 2 slices are free in all. (nvidia.com/vgpu:
// 3 through the slice devices straddles first-fit: TestDRAExtendedResource.)
func TestDRASizedDevices(t *testing.T) {
	requireDRA(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	class := &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: "vgpu-3.gpuslice.io"}, Spec: resourceapi.DeviceClassSpec{
		ExtendedResourceName: ptr.To("nvidia.com/vgpu-3"),
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
			Expression: fmt.Sprintf(`device.driver == %q && device.attributes[%q].kind == %q && device.attributes[%q].size == 3`, dra.DriverName, dra.DriverName, dra.KindSized, dra.DriverName)}}},
	}}
	if _, err := cs.ResourceV1().DeviceClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.ResourceV1().DeviceClasses().Delete(context.Background(), class.Name, metav1.DeleteOptions{})
	})
	if err := c.RestartDRADriver("--sized-devices=3"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.RestartDRADriver(); err != nil {
			t.Error(err)
		}
	})
	waitFor(t, "the sized devices published", 30*time.Second, func() bool {
		list, err := cs.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		n := 0
		for _, s := range list.Items {
			for _, d := range s.Spec.Devices {
				if k := d.Attributes[dra.AttrKind].StringValue; k != nil && *k == dra.KindSized {
					n++
				}
			}
		}
		return err == nil && n == 2
	})
	ns := newNamespace(t, "dra-sized")
	sized := func(name string) *corev1.Pod {
		p := withHostPID(pod(name, 0, "env; sleep 3600"))
		p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{"nvidia.com/vgpu-3": *resource.NewQuantity(1, resource.DecimalSI)}
		return p
	}
	gpus := map[string]bool{}
	for _, name := range []string{"a", "b"} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, sized(name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRunning(t, ns, name)
		env := containerEnv(t, ns, name)
		if env["GPUSLICE_SLICES"] != "3" || env["GPUSLICE_COMPUTE_LIMIT_RATIO"] != "0.75" || env["NVIDIA_VISIBLE_DEVICES"] == "" || gpus[env["NVIDIA_VISIBLE_DEVICES"]] {
			t.Fatalf("pod %s env %v; want 3 slices of one GPU no other pod here holds", name, env)
		}
		gpus[env["NVIDIA_VISIBLE_DEVICES"]] = true
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, sized("c"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	msg := waitUnschedulable(t, ns, "c", "")
	t.Logf("a third nvidia.com/vgpu-3 with 1 slice free on each GPU: %s", msg)
}
