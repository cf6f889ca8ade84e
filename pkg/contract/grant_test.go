package contract

import (
	"reflect"
	"slices"
	"testing"
)

func TestParseGrants(t *testing.T) {
	good := map[string]string{
		EnvVisibleDevices: "GPU-a,GPU-b",
		EnvSlices:         "3,1",
		EnvMemoryLimit:    "15000000000,5000000000",
		EnvComputeLimit:   "0.375,0.125",
	}
	got, err := ParseGrants(good)
	want := []Grant{{"GPU-a", 3, 15000000000, 0.375}, {"GPU-b", 1, 5000000000, 0.125}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseGrants = %v, %v; want %v", got, err, want)
	}
	for name, change := range map[string]map[string]string{
		"no GPUs":             {EnvVisibleDevices: ""},
		"short slices":        {EnvSlices: "3"},
		"long memory":         {EnvMemoryLimit: "1,2,3"},
		"zero slices":         {EnvSlices: "0,1"},
		"negative slices":     {EnvSlices: "-1,1"},
		"memory not a number": {EnvMemoryLimit: "lots,5"},
		"zero memory":         {EnvMemoryLimit: "0,5"},
		"ratio over 1":        {EnvComputeLimit: "1.5,0.1"},
		"ratio zero":          {EnvComputeLimit: "0,0.1"},
		"ratio NaN":           {EnvComputeLimit: "NaN,0.1"},
		"repeated GPU":        {EnvVisibleDevices: "GPU-a,GPU-a"},
		"empty GPU":           {EnvVisibleDevices: "GPU-a,"},
	} {
		envs := map[string]string{}
		for k, v := range good {
			envs[k] = v
		}
		for k, v := range change {
			envs[k] = v
		}
		if g, err := ParseGrants(envs); err == nil {
			t.Errorf("%s: accepted: %v", name, g)
		}
	}
}

func FuzzParseGrants(f *testing.F) {
	f.Add("GPU-a,GPU-b", "3,1", "15000000000,5000000000", "0.375,0.125")
	f.Add("GPU-a", "1", "1", "1")
	f.Fuzz(func(t *testing.T, uuids, counts, mem, ratio string) {
		g, err := ParseGrants(map[string]string{EnvVisibleDevices: uuids, EnvSlices: counts, EnvMemoryLimit: mem, EnvComputeLimit: ratio})
		if err != nil {
			if g != nil {
				t.Fatal("an error with a result")
			}
			return
		}
		for _, x := range g {
			if x.Slices <= 0 || x.MemoryBytes == 0 || !(x.ComputeRatio > 0 && x.ComputeRatio <= 1) || x.UUID == "" {
				t.Fatalf("accepted a bad grant %+v", x)
			}
		}
		// What the agent writes (GrantEnv) reads back the same.
		again, err := ParseGrants(GrantEnv(g))
		if err != nil || !slices.Equal(again, g) {
			t.Fatalf("GrantEnv(%+v) reads back as %+v, %v", g, again, err)
		}
	})
}
