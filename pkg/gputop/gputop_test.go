package gputop

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var now = time.Unix(1_700_000_100, 0)

func s(name string, v float64, kv ...string) Sample {
	l := map[string]string{"instance": "node-a"}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return Sample{Name: name, Labels: l, Value: v}
}

func fixture() Model {
	g0 := []string{"gpu", "0", "uuid", "GPU-0"}
	g1 := []string{"gpu", "1", "uuid", "GPU-1"}
	ctr := func(ns, pod string, g []string) []string {
		return append([]string{"namespace", ns, "pod", pod, "container", "main"}, g...)
	}
	return Build([]Sample{
		s("gpuslice_device_info", 1, append([]string{"model", "NVIDIA A100-SXM4-40GB"}, g0...)...),
		s("gpuslice_device_info", 1, append([]string{"model", "NVIDIA A100-SXM4-40GB"}, g1...)...),
		s("gpuslice_device_memory_total_bytes", 40<<30, g0...),
		s("gpuslice_device_memory_total_bytes", 40<<30, g1...),
		s("gpuslice_device_memory_used_bytes", 3<<30, g0...),
		s("gpuslice_device_utilization_ratio", 0.7, g0...),
		s("gpuslice_device_healthy", 1, g0...),
		s("gpuslice_device_healthy", 0, g1...),
		s("gpuslice_slices_capacity", 4, g0...),
		s("gpuslice_slices_capacity", 4, g1...),
		s("gpuslice_slices_allocated", 3, g0...),
		s("gpuslice_container_slices", 2, ctr("ml", "train", g0)...),
		s("gpuslice_container_memory_used_bytes", 2<<30, ctr("ml", "train", g0)...),
		s("gpuslice_container_memory_limit_bytes", 20<<30, ctr("ml", "train", g0)...),
		s("gpuslice_container_sm_utilization_ratio", 0.5, ctr("ml", "train", g0)...),
		s("gpuslice_container_compute_limit_ratio", 0.5, ctr("ml", "train", g0)...),
		s("gpuslice_container_last_active_timestamp_seconds", 1_700_000_100, ctr("ml", "train", g0)...),
		s("gpuslice_container_slices", 1, ctr("web", "idle", g0)...),
		s("gpuslice_container_memory_limit_bytes", 10<<30, ctr("web", "idle", g0)...),
		s("gpuslice_container_compute_limit_ratio", 0.25, ctr("web", "idle", g0)...),
		s("gpuslice_container_last_active_timestamp_seconds", 1_700_000_000, ctr("web", "idle", g0)...),
		s("gpuslice_something_else", 1),
	})
}

func TestTables(t *testing.T) {
	m := fixture()
	for name, tc := range map[string]struct {
		print func(*bytes.Buffer) error
		want  string
	}{
		"pods": {func(b *bytes.Buffer) error { return Pods(b, m, "", now, false) }, `
NAMESPACE  POD    CONTAINER  NODE    GPU  SLICES  MEMORY(USED/LIMIT)  COMPUTE(USED/LIMIT)  IDLE
ml         train  main       node-a  0    2       2.0Gi/20.0Gi        50%/50%              active
web        idle   main       node-a  0    1       0.0Gi/10.0Gi        0%/25%               1m40s
`},
		"pods in one namespace": {func(b *bytes.Buffer) error { return Pods(b, m, "web", now, false) }, `
NAMESPACE  POD   CONTAINER  NODE    GPU  SLICES  MEMORY(USED/LIMIT)  COMPUTE(USED/LIMIT)  IDLE
web        idle  main       node-a  0    1       0.0Gi/10.0Gi        0%/25%               1m40s
`},
		"nodes": {func(b *bytes.Buffer) error { return Nodes(b, m) }, `
NODE    GPUS  UNHEALTHY  SLICES(ALLOCATED/TOTAL)  MEMORY(USED/TOTAL)  UTILIZATION
node-a  2     1          3/8                      3.0Gi/80.0Gi        35%
`},
		"gpus": {func(b *bytes.Buffer) error { return GPUs(b, m) }, `
NODE    GPU  MODEL                  HEALTHY  SLICES(ALLOCATED/TOTAL)  MEMORY(USED/TOTAL)  UTILIZATION  UUID
node-a  0    NVIDIA A100-SXM4-40GB  true     3/4                      3.0Gi/40.0Gi        70%          GPU-0
node-a  1    NVIDIA A100-SXM4-40GB  false    0/4                      0.0Gi/40.0Gi        0%           GPU-1
`},
		"describe": {func(b *bytes.Buffer) error { return DescribeNode(b, m, "node-a", now) }, `
GPU 0  GPU-0  NVIDIA A100-SXM4-40GB  healthy
  Slices:       3 of 4 allocated
  Memory:       3.0Gi of 40.0Gi used
  Utilization:  70%
  Held by:
    NAMESPACE  POD    CONTAINER  SLICES  MEMORY(USED/LIMIT)  COMPUTE(USED/LIMIT)  IDLE
    ml         train  main       2       2.0Gi/20.0Gi        50%/50%              active
    web        idle   main       1       0.0Gi/10.0Gi        0%/25%               1m40s
GPU 1  GPU-1  NVIDIA A100-SXM4-40GB  UNHEALTHY
  Slices:       0 of 4 allocated
  Memory:       0.0Gi of 40.0Gi used
  Utilization:  0%
  Held by:      nobody
`},
	} {
		var b bytes.Buffer
		if err := tc.print(&b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got, want := b.String(), strings.TrimPrefix(tc.want, "\n"); got != want {
			t.Errorf("%s:\n got:\n%s\nwant:\n%s", name, got, want)
		}
	}
	if err := DescribeNode(&bytes.Buffer{}, m, "node-z", now); err == nil {
		t.Error("describing a node without metrics did not fail")
	}
}

func TestAgentsSource(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`# TYPE gpuslice_slices_capacity gauge
gpuslice_slices_capacity{gpu="0",uuid="GPU-0"} 4
# TYPE gpuslice_other gauge
gpuslice_other 1
`))
	}))
	defer srv.Close()
	got, err := Agents{Targets: []string{"node-x=" + srv.URL + "/metrics"}}.Samples(context.Background(), Metrics)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Labels["instance"] != "node-x" || got[0].Value != 4 {
		t.Errorf("samples = %+v, want one capacity sample of node-x", got)
	}
	if _, err := (Agents{Targets: []string{"not a url"}}).Samples(context.Background(), Metrics); err == nil {
		t.Error("a bad URL was accepted")
	}
	if _, err := (Agents{Targets: []string{"http://127.0.0.1:1/metrics"}}).Samples(context.Background(), Metrics); err == nil {
		t.Error("an unreachable agent was not an error")
	}
}
