package labels

import (
	"maps"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
)

// TestGFDMIGLabels: a mixed layout on an H100 gets GFD's per-profile
// labels, in GFD's formats, and the whole GPU beside it none.
func TestGFDMIGLabels(t *testing.T) {
	t.Parallel()
	cfg := fakegpu.Config{GPUs: []fakegpu.GPUConfig{
		{Preset: "H100-80GB", MIG: fakegpu.MIGConfig{Mode: "enabled", Instances: []fakegpu.MIGInstanceConfig{
			{Profile: "1g.10gb"}, {Profile: "1g.10gb"}, {Profile: "1g.10gb+me"}, {Profile: "3g.40gb"},
		}}},
		{Preset: "H100-80GB"},
	}}
	devs, sys, layout := node(t, cfg, 4)
	got := For(devs, sys, layout, Options{GFD: true, MIGStrategy: "mixed"})
	mig := map[string]string{}
	for k, v := range got {
		if strings.HasPrefix(k, "nvidia.com/mig") {
			mig[k] = v
		}
	}
	mem := func(p string) string {
		for _, in := range devs[0].MIG.Instances {
			if in.Profile == p {
				return strconv.FormatUint(in.MemoryBytes>>20, 10)
			}
		}
		return ""
	}
	want := map[string]string{
		"nvidia.com/mig.capable":  "true",
		"nvidia.com/mig.strategy": "mixed",
	}
	for p, v := range map[string][11]string{
		"1g.10gb":    {"2", mem("1g.10gb"), "16", "1", "1", "1", "1", "0", "1", "0", "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"},
		"1g.10gb.me": {"1", mem("1g.10gb+me"), "16", "1", "1", "1", "1", "0", "1", "1", "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb.me"},
		"3g.40gb":    {"1", mem("3g.40gb"), "60", "3", "3", "3", "3", "0", "3", "0", "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"},
	} {
		for i, k := range []string{"count", "memory", "multiprocessors", "slices.gi", "slices.ci", "engines.copy", "engines.decoder", "engines.encoder", "engines.jpeg", "engines.ofa", "product"} {
			want["nvidia.com/mig-"+p+"."+k] = v[i]
		}
	}
	if d := cmp.Diff(want, mig); d != "" {
		t.Errorf("MIG labels (-want +got):\n%s", d)
	}
	key := regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	for k := range maps.Keys(got) {
		if !key.MatchString(k) {
			t.Errorf("label key %q is not a valid Kubernetes label key", k)
		}
	}
	// A layout change leaves no label of a profile that is gone.
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.GPUs[0].MIG.Instances = []fakegpu.MIGInstanceConfig{{Profile: "7g.80gb"}}
	devs2, _, _ := node(t, cfg, 4)
	patch := Patch(got, For(devs2, sys, layout, Options{GFD: true, MIGStrategy: "mixed"}), true)
	if v, ok := patch["nvidia.com/mig-1g.10gb.count"]; !ok || v != nil {
		t.Errorf("the patch after the layout change keeps nvidia.com/mig-1g.10gb.count: %v", patch["nvidia.com/mig-1g.10gb.count"])
	}
	if v := patch["nvidia.com/mig-7g.80gb.count"]; v != "1" {
		t.Errorf("the patch sets nvidia.com/mig-7g.80gb.count to %v, want 1", v)
	}
}
