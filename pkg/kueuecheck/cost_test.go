package kueuecheck

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// TestCostOf: a Workload's slices are every pod of every pod set, each
// pod holding its containers and sidecars together or its largest plain
// init container; its maximum execution time is read when set.
func TestCostOf(t *testing.T) {
	container := func(slices int64) map[string]any {
		return map[string]any{"name": "c", "resources": map[string]any{"limits": map[string]any{"nvidia.com/vgpu": slices}}}
	}
	always := container(1)
	always["restartPolicy"] = "Always"
	w := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{
		"maximumExecutionTimeSeconds": int64(7200),
		"podSets": []any{
			map[string]any{"name": "workers", "count": int64(3), "template": map[string]any{"spec": map[string]any{
				"initContainers": []any{container(8), always},
				"containers":     []any{container(2), container(1)},
			}}},
			map[string]any{"name": "launcher", "count": int64(1), "template": map[string]any{"spec": map[string]any{
				"containers": []any{map[string]any{"name": "cpu"}},
			}}},
		},
	}}}
	c := costOf(w, contract.ResourceName, 0.25)
	// workers: max(2+1+1 sidecar, 8 init) = 8 each, 3 of them.
	if c.Slices != 24 || c.MaxExecution != 2*time.Hour || !c.Known() || c.GPUHours() != 12 {
		t.Fatalf("costOf = %+v (%.2f GPU-hours), want 24 slices for 2h: 12 GPU-hours at 1/4 GPU a slice", c, c.GPUHours())
	}
	delete(w.Object["spec"].(map[string]any), "maximumExecutionTimeSeconds")
	if c := costOf(w, contract.ResourceName, 0.25); c.Known() {
		t.Fatalf("cost known without a maximum execution time: %+v", c)
	}
}

// TestNodeSlicesPerGPU reads each GPU's slices from the agent's annotation,
// the label otherwise.
func TestNodeSlicesPerGPU(t *testing.T) {
	n := &unstructured.Unstructured{Object: map[string]any{}}
	n.SetLabels(map[string]string{"gpuslice.io/slices-per-gpu": "8"})
	if got := nodeSlicesPerGPU(n); len(got) != 1 || got[0] != 8 {
		t.Fatalf("from the label: %v", got)
	}
	ns := contract.NodeSlices{Version: 1, Resource: contract.ResourceName, Span: contract.SpanFewest, GPUs: []contract.GPUFree{{UUID: "a", Slices: 8}, {UUID: "b", Index: 1, Slices: 2}}}
	v, err := ns.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	n.SetAnnotations(map[string]string{contract.NodeSlicesAnnotation: v})
	if got := nodeSlicesPerGPU(n); len(got) != 2 || got[1] != 2 {
		t.Fatalf("from the annotation: %v", got)
	}
}
