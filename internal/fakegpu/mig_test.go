package fakegpu

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// The profile names NVIDIA's MIG user guide publishes, per board. The fake
// reports each instance's name computed from its memory the way NVIDIA's
// tools compute it, so a table whose memory fractions were wrong would
// give other names here.
var publishedProfiles = map[string][]string{
	"A100-40GB":  {"1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"},
	"A100-80GB":  {"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"},
	"H100-80GB":  {"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"},
	"H200-141GB": {"1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"},
}

func migNode(t *testing.T, preset string, m MIGConfig) (*Node, error) {
	t.Helper()
	return New(Config{GPUs: []GPUConfig{{Preset: preset, MIG: m}, {Preset: preset}}})
}

func TestMIGProfilesAreNVIDIAs(t *testing.T) {
	t.Parallel()
	if got, want := len(migProfiles), len(publishedProfiles); got != want {
		t.Fatalf("%d presets have MIG tables, want %d", got, want)
	}
	for preset, names := range publishedProfiles {
		t.Run(preset, func(t *testing.T) {
			t.Parallel()
			var got []string
			for _, p := range MIGProfiles(preset) {
				n, err := migNode(t, preset, MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{{Profile: p.Name}}})
				if err != nil {
					t.Fatal(err)
				}
				devs, _ := n.Devices()
				inst := devs[0].MIG.Instances
				if len(inst) != 1 {
					t.Fatalf("%s: %d instances", p.Name, len(inst))
				}
				got = append(got, inst[0].Profile)
				if !strings.HasPrefix(inst[0].UUID, "MIG-") || inst[0].MemoryBytes == 0 || inst[0].Multiprocessors == 0 {
					t.Errorf("%s: %+v", p.Name, inst[0])
				}
				if devs[1].MIG.Enabled() {
					t.Error("the second GPU has MIG mode though its config has none")
				}
			}
			if d := cmp.Diff(names, got); d != "" {
				t.Errorf("profile names (-published +reported):\n%s", d)
			}
		})
	}
}

func TestMIGLayouts(t *testing.T) {
	t.Parallel()
	one := func(p string) MIGInstanceConfig { return MIGInstanceConfig{Profile: p} }
	at := func(p string, s int) MIGInstanceConfig { return MIGInstanceConfig{Profile: p, Placement: &s} }
	tests := map[string]struct {
		preset     string
		mig        MIGConfig
		wantErr    string
		placements []int
	}{
		"seven 1g":               {preset: "A100-40GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{one("1g.5gb"), one("1g.5gb"), one("1g.5gb"), one("1g.5gb"), one("1g.5gb"), one("1g.5gb"), one("1g.5gb")}}, placements: []int{0, 1, 2, 3, 4, 5, 6}},
		"eight 1g":               {preset: "A100-40GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{one("1g.5gb"), one("1g.5gb"), one("1g.5gb"), one("1g.5gb"), one("1g.5gb"), one("1g.5gb"), one("1g.5gb"), one("1g.5gb")}}, wantErr: "at most 7 of 1g.5gb"},
		"3g 2g 1g 1g":            {preset: "A100-40GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{one("3g.20gb"), one("2g.10gb"), one("1g.5gb"), one("1g.5gb")}}, placements: []int{4, 0, 2, 3}},
		"mixed h100":             {preset: "H100-80GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{one("1g.10gb"), one("1g.10gb"), one("3g.40gb")}}, placements: []int{0, 1, 4}},
		"3g 3g 1g":               {preset: "A100-40GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{one("3g.20gb"), one("3g.20gb"), one("1g.5gb")}}, wantErr: "do not fit"},
		"4g and 4g":              {preset: "A100-40GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{one("4g.20gb"), one("3g.20gb"), one("1g.5gb")}}, wantErr: "compute slices"},
		"placement not allowed":  {preset: "A100-40GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{at("2g.10gb", 1)}}, wantErr: "placement 1 is not one of [0 2 4]"},
		"placement overlaps":     {preset: "A100-40GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{at("3g.20gb", 0), at("1g.5gb", 2)}}, wantErr: "do not fit"},
		"two media extensions":   {preset: "H100-80GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{one("1g.10gb+me"), one("1g.10gb+me")}}, wantErr: "at most 1 of 1g.10gb+me"},
		"instances without mode": {preset: "A100-40GB", mig: MIGConfig{Instances: []MIGInstanceConfig{one("1g.5gb")}}, wantErr: "need mig mode enabled"},
		"unknown profile":        {preset: "A100-40GB", mig: MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{one("1g.10gb+me")}}, wantErr: `no profile "1g.10gb+me"`},
		"bad mode":               {preset: "A100-40GB", mig: MIGConfig{Mode: "on"}, wantErr: `mig mode "on"`},
		"pending only":           {preset: "A100-40GB", mig: MIGConfig{Pending: "enabled"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			n, err := migNode(t, tc.preset, tc.mig)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			devs, _ := n.Devices()
			var got []int
			for _, in := range devs[0].MIG.Instances {
				got = append(got, in.Placement)
			}
			if d := cmp.Diff(tc.placements, got); d != "" {
				t.Errorf("placements (-want +got):\n%s", d)
			}
		})
	}
}

func TestMIGOnAGPUWithoutIt(t *testing.T) {
	t.Parallel()
	no := false
	_, err := New(Config{GPUs: []GPUConfig{{Preset: "A100-40GB", MIGCapable: &no, MIG: MIGConfig{Mode: "enabled"}}}})
	if err == nil || !strings.Contains(err.Error(), "not MIG-capable") {
		t.Fatalf("err %v, want not MIG-capable", err)
	}
}

func TestSetMIGChangesTheLayoutOrNothing(t *testing.T) {
	t.Parallel()
	n, err := migNode(t, "A100-40GB", MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{{Profile: "7g.40gb"}}})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := n.Devices()
	if err := n.SetMIG(0, MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{{Profile: "4g.20gb"}, {Profile: "4g.20gb"}}}); err == nil {
		t.Fatal("two 4g.20gb accepted")
	}
	after, _ := n.Devices()
	if d := cmp.Diff(before, after); d != "" {
		t.Fatalf("a refused layout changed the GPU (-before +after):\n%s", d)
	}
	if err := n.SetMIG(0, MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{{Profile: "3g.20gb"}, {Profile: "3g.20gb"}}}); err != nil {
		t.Fatal(err)
	}
	after, _ = n.Devices()
	var names []string
	for _, in := range after[0].MIG.Instances {
		names = append(names, in.Profile)
	}
	if d := cmp.Diff([]string{"3g.20gb", "3g.20gb"}, names); d != "" {
		t.Errorf("after the change (-want +got):\n%s", d)
	}
	// The caller's copy is its own.
	after[0].MIG.Instances[0].UUID = "changed"
	again, _ := n.Devices()
	if again[0].MIG.Instances[0].UUID == "changed" {
		t.Error("Devices hands out the node's own instances")
	}
}

func TestMIGCapMinorsMatchTheFile(t *testing.T) {
	t.Parallel()
	lines := strings.Split(MIGMinorsFile(2), "\n")
	want := map[string]string{"gpu0/gi0/access": "3", "gpu0/gi0/ci0/access": "4", "gpu0/gi1/access": "12", "gpu1/gi0/access": "138"}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 2 && want[f[0]] != "" && want[f[0]] != f[1] {
			t.Errorf("%s: %s, want %s", f[0], f[1], want[f[0]])
		}
	}
	if got := MIGCapMinor(1, 2, 3); got != 3+135+18+4 {
		t.Errorf("MIGCapMinor(1, 2, 3) = %d", got)
	}
}

// TestSetMIGKeepsSurvivingInstances: an instance whose profile and
// placement the new layout keeps survives the change with its IDs and
// UUID, as on the real driver; a new one never reuses a destroyed one's
// UUID.
func TestSetMIGKeepsSurvivingInstances(t *testing.T) {
	t.Parallel()
	at := func(p string, s int) MIGInstanceConfig { return MIGInstanceConfig{Profile: p, Placement: &s} }
	n, err := migNode(t, "A100-40GB", MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{at("3g.20gb", 4), at("2g.10gb", 0), at("1g.5gb", 2), at("1g.5gb", 3)}})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := n.Devices()
	old := before[0].MIG.Instances
	if err := n.SetMIG(0, MIGConfig{Mode: "enabled", Instances: []MIGInstanceConfig{at("1g.5gb", 3), at("1g.5gb", 4), at("2g.10gb", 0), at("1g.5gb", 2), at("1g.5gb", 5)}}); err != nil {
		t.Fatal(err)
	}
	after, _ := n.Devices()
	byPlacement := map[int]nvml.MIGInstance{}
	for _, in := range after[0].MIG.Instances {
		byPlacement[in.Placement] = in
	}
	for _, o := range old[1:] { // the 2g and both 1g survive
		if got := byPlacement[o.Placement]; got.UUID != o.UUID || got.GPUInstanceID != o.GPUInstanceID || got.GICapMinor != o.GICapMinor {
			t.Errorf("%s at %d: %+v, want it kept (%s, gi %d)", o.Profile, o.Placement, got, o.UUID, o.GPUInstanceID)
		}
	}
	seen := map[int]bool{}
	for _, in := range after[0].MIG.Instances {
		if seen[in.GPUInstanceID] {
			t.Errorf("gpu instance id %d given twice", in.GPUInstanceID)
		}
		seen[in.GPUInstanceID] = true
		if in.UUID == old[0].UUID {
			t.Errorf("the destroyed 3g.20gb's UUID came back on %s at %d", in.Profile, in.Placement)
		}
	}
	// The new instances take the lowest free IDs: the destroyed 3g's, then the next.
	if a, b := byPlacement[4].GPUInstanceID, byPlacement[5].GPUInstanceID; a != old[0].GPUInstanceID || b != 5 {
		t.Errorf("new instances at 4 and 5 have gpu instances %d and %d, want %d and 5", a, b, old[0].GPUInstanceID)
	}
}
