package dra_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gpuslice/gpuslice/pkg/dra"
)

func preparer(t *testing.T, o dra.PreparerOptions) *dra.Preparer {
	t.Helper()
	p, err := dra.NewPreparer(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func claimOf(uid types.UID, results ...resourceapi.DeviceRequestAllocationResult) *resourceapi.ResourceClaim {
	c := claim(results...)
	c.UID, c.Name = uid, string(uid)
	return c
}

func specs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestPreparerAcrossRestarts: claims prepared before the agent restarts
// still hold their share of the GPU after it (a claim that would
// overcommit is refused by the new agent too, and leaves nothing behind),
// Prepare and Unprepare are idempotent, and an unprepared claim frees
// its share.
func TestPreparerAcrossRestarts(t *testing.T) {
	t.Parallel()
	l, devs := node(t, 1, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	dir := t.TempDir()
	o := dra.PreparerOptions{
		Pool: pool, Layout: l, CDIDir: filepath.Join(dir, "cdi"), StatePath: filepath.Join(dir, "prepared.json"),
		Nodes: dra.Nodes{DevRoot: "/dev", Minor: map[string]int{devs[0].UUID: 0}},
	}
	if err := os.Mkdir(o.CDIDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := preparer(t, o)
	a, b := claimOf("uid-a", share("gpu-0", 3, 30)), claimOf("uid-b", share("gpu-0", 4, 40))
	for _, c := range []*resourceapi.ResourceClaim{a, b, a} {
		id, err := p.Prepare(c)
		if err != nil || id != dra.CDIDeviceID(c.UID) {
			t.Fatalf("Prepare(%s) = %q, %v", c.Name, id, err)
		}
	}

	// The agent restarts.
	p = preparer(t, o)
	if got := p.Claims(); len(got) != 2 || got["uid-a"].Grants[0].Slices != 3 {
		t.Fatalf("after a restart the prepared claims are %+v", got)
	}
	c := claimOf("uid-c", share("gpu-0", 2, 10))
	if _, err := p.Prepare(c); !errors.Is(err, dra.ErrOvercommitted) {
		t.Fatalf("9 of 8 slices after a restart: %v, want ErrOvercommitted", err)
	}
	if names := specs(t, o.CDIDir); len(names) != 2 || strings.Contains(strings.Join(names, " "), "uid-c") {
		t.Errorf("CDI specs after the refused claim: %v", names)
	}
	for range 2 {
		if err := p.Unprepare("uid-b"); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Unprepare("never-prepared"); err != nil {
		t.Errorf("Unprepare of a claim never prepared: %v", err)
	}
	if _, err := p.Prepare(c); err != nil {
		t.Errorf("after b was unprepared, c should fit: %v", err)
	}
	// And once more from disk: a, c prepared; b gone.
	p = preparer(t, o)
	got := p.Claims()
	if _, ok := got["uid-b"]; ok || len(got) != 2 {
		t.Errorf("after another restart the prepared claims are %+v", got)
	}
	if names := specs(t, o.CDIDir); len(names) != 2 {
		t.Errorf("CDI specs: %v, want a's and c's", names)
	}
}

// TestPreparerRefusesABadRecord: a record it cannot read, of another
// version, or that overcommits a GPU stops the preparer with an error
// naming the file: starting empty could hand a GPU out twice.
func TestPreparerRefusesABadRecord(t *testing.T) {
	t.Parallel()
	l, _ := node(t, 1, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	for name, content := range map[string]string{
		"torn":          `{"version":1,"claims":{"a":`,
		"other version": `{"version":2,"claims":{}}`,
		"overcommitted": `{"version":1,"claims":{` +
			`"a":{"namespace":"n","name":"a","grants":[{"uuid":"GPU-00000000-0000-0000-0000-000000000000","slices":6,"slicesTotal":8,"computeRatio":0.75,"memoryBytes":1,"memoryCapacity":85899345920}]},` +
			`"b":{"namespace":"n","name":"b","grants":[{"uuid":"GPU-00000000-0000-0000-0000-000000000000","slices":6,"slicesTotal":8,"computeRatio":0.75,"memoryBytes":1,"memoryCapacity":85899345920}]}}}`,
	} {
		path := filepath.Join(t.TempDir(), "prepared.json")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := dra.NewPreparer(dra.PreparerOptions{Pool: pool, Layout: l, StatePath: path})
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s record: %v, want an error naming %s", name, err, path)
		}
		if name == "overcommitted" && !errors.Is(err, dra.ErrOvercommitted) {
			t.Errorf("overcommitted record: %v, want ErrOvercommitted", err)
		}
	}
}

// TestPreparerWhenTheRecordCannotBeWritten is the full-disk attack: when
// the record cannot be written (here its directory is gone), Prepare
// fails and leaves no spec and nothing held, so the kubelet's retry starts
// clean; Unprepare fails and keeps the claim held, since the record on
// disk still names it and a restart would count it again.
func TestPreparerWhenTheRecordCannotBeWritten(t *testing.T) {
	t.Parallel()
	l, devs := node(t, 1, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	o := dra.PreparerOptions{
		Pool: pool, Layout: l, CDIDir: filepath.Join(dir, "cdi"), StatePath: filepath.Join(stateDir, "prepared.json"),
		Nodes: dra.Nodes{DevRoot: "/dev", Minor: map[string]int{devs[0].UUID: 0}},
	}
	for _, d := range []string{o.CDIDir, stateDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := preparer(t, o)
	if _, err := p.Prepare(claimOf("uid-a", share("gpu-0", 6, 60))); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(stateDir); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Prepare(claimOf("uid-b", share("gpu-0", 2, 20))); err == nil {
		t.Fatal("Prepare succeeded with no record written")
	}
	if names := specs(t, o.CDIDir); len(names) != 1 {
		t.Errorf("CDI specs after the failed Prepare: %v, want a's alone", names)
	}
	if err := p.Unprepare("uid-a"); err == nil {
		t.Fatal("Unprepare succeeded with no record written")
	}
	if err := os.Mkdir(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// b held nothing, a is still held: 2 more slices fit, 3 do not.
	if _, err := p.Prepare(claimOf("uid-c", share("gpu-0", 3, 30))); !errors.Is(err, dra.ErrOvercommitted) {
		t.Errorf("a claim needing the slices a still holds: %v, want ErrOvercommitted", err)
	}
	if _, err := p.Prepare(claimOf("uid-d", share("gpu-0", 2, 20))); err != nil {
		t.Errorf("the 2 slices b failed to take, once the record can be written: %v", err)
	}
}

// TestPreparerBesideTheDevicePlugin: a claim on a GPU that device-plugin
// containers hold slices of is refused, leaving nothing behind; a GPU
// they do not hold is served; when which GPUs they hold cannot be told,
// every claim is refused (the front ends never share a GPU unknowingly).
func TestPreparerBesideTheDevicePlugin(t *testing.T) {
	t.Parallel()
	l, devs := node(t, 2, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	dir := t.TempDir()
	var held map[string]bool
	var heldErr error
	o := dra.PreparerOptions{
		Pool: pool, Layout: l, CDIDir: filepath.Join(dir, "cdi"), StatePath: filepath.Join(dir, "prepared.json"),
		Nodes:            dra.Nodes{DevRoot: "/dev", Minor: map[string]int{devs[0].UUID: 0, devs[1].UUID: 1}},
		DevicePluginGPUs: func() (map[string]bool, error) { return held, heldErr },
	}
	if err := os.Mkdir(o.CDIDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := preparer(t, o)
	held = map[string]bool{devs[0].UUID: true}
	if _, err := p.Prepare(claimOf("uid-a", share("gpu-0", 1, 10))); !errors.Is(err, dra.ErrHeldByDevicePlugin) {
		t.Fatalf("a claim on a GPU with device-plugin slices: %v, want ErrHeldByDevicePlugin", err)
	}
	if _, err := p.Prepare(claimOf("uid-b", share("gpu-1", 1, 10))); err != nil {
		t.Fatalf("a claim on a GPU without device-plugin slices: %v", err)
	}
	heldErr = errors.New("checkpoint unreadable")
	if _, err := p.Prepare(claimOf("uid-c", share("gpu-1", 1, 10))); !errors.Is(err, dra.ErrHeldByDevicePlugin) {
		t.Fatalf("a claim while the device plugin's holdings are unknown: %v, want refused", err)
	}
	if got := p.Claims(); len(got) != 1 {
		t.Errorf("prepared claims %v, want only uid-b", got)
	}
	if names := specs(t, o.CDIDir); len(names) != 1 {
		t.Errorf("CDI specs %v, want only uid-b's", names)
	}
}

// TestPreparerRefusesAnUnhealthyGPU: a new claim on a GPU that is
// unhealthy is refused and leaves nothing behind, as the device plugin's
// Allocate refuses its slices; a claim prepared before stays prepared, and
// preparing it again (a restarted kubelet) still works; once the GPU
// recovers, new claims are served.
func TestPreparerRefusesAnUnhealthyGPU(t *testing.T) {
	t.Parallel()
	l, devs := node(t, 2, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	dir := t.TempDir()
	o := dra.PreparerOptions{
		Pool: pool, Layout: l, CDIDir: filepath.Join(dir, "cdi"), StatePath: filepath.Join(dir, "prepared.json"),
		Nodes: dra.Nodes{DevRoot: "/dev", Minor: map[string]int{devs[0].UUID: 0, devs[1].UUID: 1}},
	}
	if err := os.Mkdir(o.CDIDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := preparer(t, o)
	running := claimOf("uid-run", share("gpu-0", 1, 10))
	if _, err := p.Prepare(running); err != nil {
		t.Fatal(err)
	}
	p.SetHealth(devs[0].UUID, "unhealthy (xid)")
	if _, err := p.Prepare(claimOf("uid-new", share("gpu-0", 1, 10))); !errors.Is(err, dra.ErrUnhealthyGPU) || !strings.Contains(err.Error(), "xid") {
		t.Fatalf("a new claim on an unhealthy GPU: %v, want ErrUnhealthyGPU with the reason", err)
	}
	if _, err := p.Prepare(running); err != nil {
		t.Errorf("preparing a running claim again on its now unhealthy GPU: %v", err)
	}
	if _, err := p.Prepare(claimOf("uid-other", share("gpu-1", 1, 10))); err != nil {
		t.Errorf("a claim on the healthy GPU: %v", err)
	}
	if got := p.Claims(); len(got) != 2 {
		t.Errorf("prepared claims %v, want uid-run and uid-other", got)
	}
	p.SetHealth(devs[0].UUID, "")
	if _, err := p.Prepare(claimOf("uid-new", share("gpu-0", 1, 10))); err != nil {
		t.Errorf("a new claim once the GPU recovered: %v", err)
	}
}
