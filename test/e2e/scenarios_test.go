package e2e

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/test/e2e/cluster"
)

func TestNodeCapacity(t *testing.T) {
	cs := c.API.Clientset(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), cluster.NodeName, metav1.GetOptions{})
		if err == nil {
			capq, alloc := n.Status.Capacity["nvidia.com/vgpu"], n.Status.Allocatable["nvidia.com/vgpu"]
			if capq.Value() == 8 && alloc.Value() == 8 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node capacity never showed 8 nvidia.com/vgpu: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
