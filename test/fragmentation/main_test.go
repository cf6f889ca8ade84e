package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/apiserver"
)

// TestSmoke runs a short stream through two paths with the real API
// server and scheduler, so that make fragmentation keeps working: the
// extender's path never straddles, and the mapping's does (first-fit),
// which shows the straddle count can see one.
func TestSmoke(t *testing.T) {
	if missing := apiserver.Missing("etcd", "kube-apiserver", "kube-scheduler"); len(missing) > 0 {
		if os.Getenv("GPUSLICE_REQUIRE_APISERVER") != "" {
			t.Fatalf("%v not built (test/e2e/build-k8s.sh)", missing)
		}
		t.Skipf("%v not built (test/e2e/build-k8s.sh)", missing)
	}
	c := config{seed: 7, nodes: 1, gpus: 4, slices: 8, pods: 30, rate: 10, lifetime: 2 * time.Second, limit: 90 * time.Second,
		only: "extender,mapping"}
	var out bytes.Buffer
	results, err := run(context.Background(), c, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	if len(results) != 2 || !strings.Contains(out.String(), "| device plugin + gpu-scheduler-extender |") {
		t.Fatalf("results %+v", results)
	}
	for _, r := range results {
		if r.ran+r.failed != c.pods {
			t.Errorf("%s: %d ran and %d failed of %d", r.path, r.ran, r.failed, c.pods)
		}
	}
	if ext := results[0]; ext.straddled != 0 || ext.failed != 0 {
		t.Errorf("extender: %d straddled, %d failed, want none", ext.straddled, ext.failed)
	}
	if m := results[1]; m.straddled == 0 {
		t.Errorf("mapping: no pod straddled GPUs; first-fit over 30 pods always makes some")
	}
}
