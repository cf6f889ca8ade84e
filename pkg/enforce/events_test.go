package enforce_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/events"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// TestWatchdogRecordsEvents checks that an overrun and its kill become
// Events on the pod in a real API server, tied to the pod's UID.
func TestWatchdogRecordsEvents(t *testing.T) {
	t.Parallel()
	srv := apiserver.Start(t)
	client := srv.Clientset(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ml"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec := events.New(srv.Client(t), "gpu-node", nil)
	defer rec.Stop()
	s := startSetupWith(t, []int{2}, []float64{0.05}, true, func(o *enforce.Options) { o.Compute = false; o.Events = rec })
	s.AddProcess(t, 0, 10240)
	time.Sleep(time.Second)
	over := s.AddProcess(t, 0, 8192)
	if !over.Exited(10 * time.Second) {
		t.Fatal("overrun not killed")
	}
	want := map[string]bool{"GPUMemoryLimitExceeded": false, "GPUProcessKilled": false}
	for ctx.Err() == nil {
		list, err := client.CoreV1().Events("ml").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			if _, ok := want[e.Reason]; ok && e.InvolvedObject.Name == "p0" && string(e.InvolvedObject.UID) == kubeletstub.PodUID("ml/p0") &&
				e.Type == corev1.EventTypeWarning && e.Source.Component == events.Component {
				want[e.Reason] = true
			}
		}
		if want["GPUMemoryLimitExceeded"] && want["GPUProcessKilled"] {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("events seen: %v", want)
}
