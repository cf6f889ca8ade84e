package nvml_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/nvml"
)

var migLayouts = fakegpu.Config{GPUs: []fakegpu.GPUConfig{
	{Preset: "A100-40GB", MIG: fakegpu.MIGConfig{Mode: "enabled", Instances: []fakegpu.MIGInstanceConfig{
		{Profile: "3g.20gb"}, {Profile: "2g.10gb"}, {Profile: "1g.5gb+me"}, {Profile: "1g.5gb"},
	}}},
	{Preset: "H100-80GB"},
	{Preset: "H200-141GB", MIG: fakegpu.MIGConfig{Pending: "enabled"}},
	{Preset: "H200-141GB", MIG: fakegpu.MIGConfig{Mode: "enabled", Pending: "disabled", Instances: []fakegpu.MIGInstanceConfig{{Profile: "7g.141gb"}}}},
}}

// TestMIGThroughNVML: NVML's MIG calls (mode, MIG device handles, their
// attributes and GPU instances) give the agent the same GPUs, modes and
// instances as the fake node holds, profile names and capability minors
// included; a layout changed at run time is read anew.
func TestMIGThroughNVML(t *testing.T) {
	f := newFakeNVML(t, migLayouts)
	minors := filepath.Join(t.TempDir(), "mig-minors")
	if err := os.WriteFile(minors, []byte(fakegpu.MIGMinorsFile(4)), 0o600); err != nil {
		t.Fatal(err)
	}
	b := open(t, func(o *nvml.Options) { o.MIGMinorsFile = minors })
	want, _ := f.node.Devices()
	got, err := b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Devices() through NVML differs from the fake node (-want +got)\n%s", diff)
	}
	var names []string
	for _, in := range got[0].MIG.Instances {
		names = append(names, in.Profile)
	}
	if d := cmp.Diff([]string{"3g.20gb", "2g.10gb", "1g.5gb+me", "1g.5gb"}, names); d != "" {
		t.Errorf("profiles (-want +got):\n%s", d)
	}
	if !got[2].MIG.Pending || got[2].MIG.Current || !got[3].MIG.Current || got[3].MIG.Pending {
		t.Errorf("modes: %+v, %+v", got[2].MIG, got[3].MIG)
	}

	if err := f.node.SetMIG(0, fakegpu.MIGConfig{Mode: "enabled", Instances: []fakegpu.MIGInstanceConfig{{Profile: "7g.40gb"}}}); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	got, err = b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if in := got[0].MIG.Instances; len(in) != 1 || in[0].Profile != "7g.40gb" {
		t.Errorf("after the layout change: %+v", in)
	}
}

// Without the driver's mig-minors list the instances are still read, with
// their capability minors unknown.
func TestMIGWithoutMinors(t *testing.T) {
	newFakeNVML(t, migLayouts)
	b := open(t, func(o *nvml.Options) { o.MIGMinorsFile = filepath.Join(t.TempDir(), "absent") })
	got, err := b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range got[0].MIG.Instances {
		if in.GICapMinor != -1 || in.CICapMinor != -1 {
			t.Errorf("%s: cap minors %d/%d, want -1", in.UUID, in.GICapMinor, in.CICapMinor)
		}
	}
	if len(got[0].MIG.Instances) != 4 {
		t.Errorf("%d instances, want 4", len(got[0].MIG.Instances))
	}
}

func TestParseMIGMinors(t *testing.T) {
	t.Parallel()
	m, err := nvml.ParseMIGMinors([]byte(fakegpu.MIGMinorsFile(1)))
	if err != nil {
		t.Fatal(err)
	}
	if m["config"] != 1 || m["gpu0/gi1/ci0/access"] != 13 {
		t.Errorf("minors: config %d, gpu0/gi1/ci0 %d", m["config"], m["gpu0/gi1/ci0/access"])
	}
	for _, bad := range []string{"", "config\n", "config one\n", "config -1\n", "a b c\n", "config 99999999999\n"} {
		if _, err := nvml.ParseMIGMinors([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseMIGMinors(f *testing.F) {
	f.Add([]byte(fakegpu.MIGMinorsFile(1)))
	f.Add([]byte("config 1\nmonitor 2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := nvml.ParseMIGMinors(data)
		if err != nil {
			return
		}
		for k, v := range m {
			if k == "" || strings.ContainsAny(k, " \t\n") || v < 0 {
				t.Fatalf("parsed %q -> %d", k, v)
			}
		}
	})
}
