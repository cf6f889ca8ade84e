package attribution

import (
	"encoding/json"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// draCheckpoint writes a checkpoint as the kubelet's DRA manager does (its
// state package: the data as a JSON string, with its CRC-32).
func draCheckpoint(t testing.TB, data string) []byte {
	t.Helper()
	out, err := json.Marshal(struct {
		Data     string
		Checksum uint32
	}{data, crc32.ChecksumIEEE([]byte(data))})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

const draCheckpointData = `{"kind":"DRACheckpoint","apiVersion":"checkpoint.dra.kubelet.k8s.io/v1","ClaimInfoStateList":[
 {"ClaimUID":"c2","ClaimName":"gpu","Namespace":"ml","PodUIDs":{"` + uidB + `":{},"` + uidA + `":{}},
  "DriverState":{"gpu.gpuslice.io":{"Devices":[{"PoolName":"n1","DeviceName":"gpu-0","ShareID":"s1","RequestNames":["gpu"],"CDIDeviceIDs":["gpu.gpuslice.io/claim=c2"]}]}}},
 {"ClaimUID":"c1","ClaimName":"nic","Namespace":"ml","PodUIDs":{"` + uidA + `":{}},
  "DriverState":{"nic.example.com":{"Devices":[]}}},
 {"ClaimUID":"c0","ClaimName":"one","Namespace":"lab","PodUIDs":{"` + uidA + `":{}},
  "DriverState":{"gpu.gpuslice.io":{"Devices":[]}}}]}`

func TestParseDRACheckpoint(t *testing.T) {
	t.Parallel()
	got, err := ParseDRACheckpoint(draCheckpoint(t, draCheckpointData), contract.DRADriverName)
	if err != nil {
		t.Fatal(err)
	}
	want := []DRAClaim{
		{UID: "c0", Namespace: "lab", Name: "one", PodUIDs: []string{uidA}},
		{UID: "c2", Namespace: "ml", Name: "gpu", PodUIDs: []string{uidA, uidB}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	empty := `{"kind":"DRACheckpoint","apiVersion":"checkpoint.dra.kubelet.k8s.io/v1","ClaimInfoStateList":null}`
	if got, err := ParseDRACheckpoint(draCheckpoint(t, empty), contract.DRADriverName); err != nil || got == nil || len(got) != 0 {
		t.Errorf("the kubelet's empty checkpoint = %#v, %v; want an empty, non-nil list", got, err)
	}
	tampered := draCheckpoint(t, draCheckpointData)
	var cp map[string]any
	_ = json.Unmarshal(tampered, &cp)
	cp["Data"] = `{"kind":"DRACheckpoint","apiVersion":"checkpoint.dra.kubelet.k8s.io/v1","ClaimInfoStateList":[]}`
	tampered, _ = json.Marshal(cp)
	for name, bad := range map[string][]byte{
		"not json":         []byte(`{`),
		"no data":          []byte(`{"Checksum":0}`),
		"checksum wrong":   tampered,
		"another kind":     draCheckpoint(t, `{"kind":"Other","apiVersion":"checkpoint.dra.kubelet.k8s.io/v1"}`),
		"another version":  draCheckpoint(t, `{"kind":"DRACheckpoint","apiVersion":"checkpoint.dra.kubelet.k8s.io/v2"}`),
		"claim without id": draCheckpoint(t, `{"kind":"DRACheckpoint","apiVersion":"checkpoint.dra.kubelet.k8s.io/v1","ClaimInfoStateList":[{"ClaimName":"x"}]}`),
		"data not json":    draCheckpoint(t, `[`),
	} {
		if got, err := ParseDRACheckpoint(bad, contract.DRADriverName); err == nil {
			t.Errorf("%s: accepted as %+v", name, got)
		}
	}
}

func FuzzParseDRACheckpoint(f *testing.F) {
	f.Add(draCheckpoint(f, draCheckpointData))
	f.Add(draCheckpoint(f, `{"kind":"DRACheckpoint","apiVersion":"checkpoint.dra.kubelet.k8s.io/v1","ClaimInfoStateList":[{"ClaimUID":"u","DriverState":{"gpu.gpuslice.io":{}}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		claims, err := ParseDRACheckpoint(data, contract.DRADriverName)
		if err != nil {
			return
		}
		if claims == nil {
			t.Fatal("an accepted checkpoint gave nil, which reads as unknown")
		}
		for _, c := range claims {
			if c.UID == "" || !sort.StringsAreSorted(c.PodUIDs) {
				t.Fatalf("accepted claim %+v", c)
			}
		}
	})
}

// TestPreparedClaimsRead: the driver's record, read through the cache; one
// with no claims reads as known and empty, a missing one as unknown.
func TestPreparedClaimsRead(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "dra-prepared.json")
	r := NewPreparedClaims(path)
	defer r.Close()
	if _, err := r.Read(); err == nil {
		t.Error("a missing record read as known")
	}
	if err := os.WriteFile(path, []byte(`{"version":1,"claims":null}`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := r.Read()
	if err != nil || got.Claims == nil || len(got.Claims) != 0 {
		t.Errorf("empty record = %+v, %v; want known and empty", got, err)
	}
}

func TestClaimedGPUsReader(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "dra-prepared.json")
	read := ClaimedGPUsReader(path)
	if got, err := read(); err != nil || len(got) != 0 {
		t.Errorf("no record: %v, %v; want none held", got, err)
	}
	g := contract.ClaimGrant{UUID: "GPU-1", Slices: 1, SlicesTotal: 4, ComputeRatio: 0.25, MemoryBytes: 1, MemoryCapacity: 4}
	admin := contract.ClaimGrant{UUID: "GPU-2", SlicesTotal: 4, MemoryCapacity: 4, Admin: true}
	data, _ := json.Marshal(contract.PreparedClaims{Version: 1, Claims: map[string]contract.PreparedClaim{"a": {Grants: []contract.ClaimGrant{g, admin}}}})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := read(); err != nil || len(got) != 1 || !got["GPU-1"] {
		t.Errorf("record with a share of GPU-1 and admin access to GPU-2: %v, %v", got, err)
	}
	if err := os.WriteFile(path, []byte(`{"version":9}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := read(); err == nil {
		t.Errorf("a bad record read as %v", got)
	}
}
