package dra_test

import (
	"errors"
	"testing"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/dra"
)

// TestEnvIsTheContainerContract: a claim's container is told what it holds
// in the environment device-plugin mode uses, which the agent's own reader
// (contract.ParseGrants) reads back to what the claim consumed.
func TestEnvIsTheContainerContract(t *testing.T) {
	t.Parallel()
	l, devs := node(t, 2, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	grants, err := dra.Grants(claim(share("gpu-1", 3, 20), share("gpu-0", -1, 0)), pool, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	env, err := dra.Env(grants)
	if err != nil {
		t.Fatal(err)
	}
	got, err := contract.ParseGrants(env)
	if err != nil {
		t.Fatal(err)
	}
	want := []contract.Grant{
		{UUID: devs[0].UUID, Slices: 8, MemoryBytes: 80 << 30, ComputeRatio: 1},
		{UUID: devs[1].UUID, Slices: 3, MemoryBytes: 20 << 30, ComputeRatio: 0.375},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("the container reads back %+v, want %+v", got, want)
	}

	admin := share("gpu-0", 1, 10)
	admin.AdminAccess = ref(true)
	onlyAdmin, _ := dra.Grants(claim(admin), pool, l, nil)
	env, err = dra.Env(onlyAdmin)
	if err != nil || len(env) != 1 || env[contract.EnvVisibleDevices] != devs[0].UUID {
		t.Errorf("admin access: %v, %v; want the GPU and no limits", env, err)
	}
	mixed, _ := dra.Grants(claim(admin, share("gpu-1", 1, 10)), pool, l, nil)
	if _, err := dra.Env(mixed); !errors.Is(err, dra.ErrMixedAdmin) {
		t.Errorf("admin access and a share in one claim = %v, want ErrMixedAdmin", err)
	}
}
