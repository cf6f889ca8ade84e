package contract

import (
	"errors"
	"strings"
	"testing"
)

const goodClaims = `{"version":1,"claims":{"uid-a":{"namespace":"team","name":"a","grants":[
 {"uuid":"GPU-a","index":0,"slices":3,"slicesTotal":8,"computeRatio":0.375,"memoryBytes":32212254720,"memoryCapacity":85899345920},
 {"uuid":"GPU-b","index":1,"slices":8,"slicesTotal":8,"computeRatio":1,"memoryBytes":85899345920,"memoryCapacity":85899345920,"whole":true}]},
 "uid-m":{"namespace":"monitoring","name":"m","grants":[{"uuid":"GPU-a","slicesTotal":8,"memoryCapacity":85899345920,"admin":true}]}}}`

// TestParsePreparedClaims: the agent trusts the record for limits only
// when every grant is one the driver could have written.
func TestParsePreparedClaims(t *testing.T) {
	r, err := ParsePreparedClaims([]byte(goodClaims))
	if err != nil || len(r.Claims) != 2 || r.Claims["uid-a"].Grants[0].Slices != 3 || !r.Claims["uid-m"].Grants[0].Admin {
		t.Fatalf("ParsePreparedClaims = %+v, %v", r, err)
	}
	for name, bad := range map[string][2]string{
		"torn":               {`"version":1`, `"version":1,`},
		"other version":      {`"version":1`, `"version":2`},
		"no GPU":             {`"uuid":"GPU-a","index":0`, `"uuid":"","index":0`},
		"more than the GPU":  {`"slices":3,`, `"slices":9,`},
		"no slices":          {`"slices":3,`, `"slices":0,`},
		"ratio disagrees":    {`"computeRatio":0.375`, `"computeRatio":0.5`},
		"memory over":        {`"memoryBytes":32212254720`, `"memoryBytes":85899345921`},
		"admin holding some": {`"slicesTotal":8,"memoryCapacity":85899345920,"admin":true`, `"slices":1,"slicesTotal":8,"memoryCapacity":85899345920,"admin":true`},
		"not JSON":           {`{"version"`, `["version"`},
	} {
		data := strings.Replace(goodClaims, bad[0], bad[1], 1)
		if data == goodClaims {
			t.Fatalf("%s: the change did not apply", name)
		}
		if r, err := ParsePreparedClaims([]byte(data)); !errors.Is(err, ErrBadPreparedClaims) || r.Claims != nil {
			t.Errorf("%s: %v, %+v; want ErrBadPreparedClaims and nothing", name, err, r)
		}
	}
}

func TestClaimUIDOfCDIDevice(t *testing.T) {
	for name, want := range map[string]string{
		"gpu.gpuslice.io/claim=0f1e-2d": "0f1e-2d",
		"gpu.gpuslice.io/claim=":        "",
		"nvidia.com/gpu=all":            "",
		"gpu.gpuslice.io/other=x":       "",
	} {
		got, ok := ClaimUIDOfCDIDevice(name)
		if got != want || ok != (want != "") {
			t.Errorf("ClaimUIDOfCDIDevice(%q) = %q, %t", name, got, ok)
		}
	}
}

// FuzzParsePreparedClaims: whatever the file holds, what the parser
// accepts is within its GPUs.
func FuzzParsePreparedClaims(f *testing.F) {
	f.Add([]byte(goodClaims))
	f.Add([]byte(`{"version":1,"claims":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParsePreparedClaims(data)
		if err != nil {
			return
		}
		for _, c := range r.Claims {
			for _, g := range c.Grants {
				if g.MemoryBytes > g.MemoryCapacity || g.Slices > g.SlicesTotal || g.UUID == "" || (!g.Admin && g.Slices < 1) {
					t.Fatalf("accepted %+v", g)
				}
			}
		}
	})
}
