package dra_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/dra"
)

// TestCDISpecAsTheRuntimeReadsIt writes a claim's spec and has the CDI
// library that containerd and CRI-O use inject the claim's device into a
// container's OCI spec: the container gets the GPUs' device nodes and the
// environment the agent reads back as what the claim consumed. Writing
// again changes nothing; after removal the device no longer resolves.
func TestCDISpecAsTheRuntimeReadsIt(t *testing.T) {
	t.Parallel()
	l, devs := node(t, 2, 8, "NVIDIA H100 80GB HBM3", 80<<30)
	grants, err := dra.Grants(claim(share("gpu-1", 3, 20), share("gpu-0", -1, 0)), pool, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Character devices where the runtime will stat them (made as
	// /dev/null's numbers: the library only reads their type and numbers).
	devRoot, specDir := t.TempDir(), t.TempDir()
	for _, n := range []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1"} {
		err := unix.Mknod(filepath.Join(devRoot, n), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3)))
		if errors.Is(err, unix.EPERM) {
			if os.Getenv("GPUSLICE_REQUIRE_ROOT") != "" {
				t.Fatalf("root is required (GPUSLICE_REQUIRE_ROOT is set): mknod: %v", err)
			}
			t.Skipf("making device nodes needs root: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	uid := types.UID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
	spec, err := dra.CDISpec(uid, grants, dra.Nodes{DevRoot: devRoot, Minor: map[string]int{devs[0].UUID: 0, devs[1].UUID: 1}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := dra.WriteCDISpec(specDir, uid, spec); err != nil {
			t.Fatal(err)
		}
	}
	if entries, _ := os.ReadDir(specDir); len(entries) != 1 {
		t.Fatalf("spec dir holds %d files after two writes, want 1", len(entries))
	}

	cache, err := cdi.NewCache(cdi.WithSpecDirs(specDir), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("the CDI library refused the spec: %v", errs)
	}
	ctr := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(ctr, dra.CDIDeviceID(uid)); err != nil {
		t.Fatalf("inject %s: %v (unresolved %v)", dra.CDIDeviceID(uid), err, unresolved)
	}
	var paths []string
	for _, d := range ctr.Linux.Devices {
		paths = append(paths, d.Path)
	}
	slices.Sort(paths)
	if want := []string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"}; !slices.Equal(paths, want) {
		t.Errorf("device nodes %v, want %v", paths, want)
	}
	env := map[string]string{}
	for _, kv := range ctr.Process.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	got, err := contract.ParseGrants(env)
	if err != nil {
		t.Fatalf("the container's environment %v: %v", ctr.Process.Env, err)
	}
	if len(got) != 2 || got[0].UUID != devs[0].UUID || got[0].Slices != 8 || got[1].Slices != 3 || got[1].MemoryBytes != 20<<30 {
		t.Errorf("the container reads back %+v", got)
	}

	for range 2 {
		if err := dra.RemoveCDISpec(specDir, uid); err != nil {
			t.Fatal(err)
		}
	}
	if err := cache.Refresh(); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.InjectDevices(&oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}, dra.CDIDeviceID(uid)); err == nil {
		t.Error("the claim's device still resolves after its spec was removed")
	}
}

// TestClaimUIDsStayInTheirDirectory: a UID that could climb out of the
// spec directory or is no CDI name is refused before any file is touched.
func TestClaimUIDsStayInTheirDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, uid := range []types.UID{"", "../escape", "a/b", ".hidden", "-x", "x y", types.UID(strings.Repeat("a", 129))} {
		if _, err := dra.CDISpec(uid, nil, dra.Nodes{}); !errors.Is(err, dra.ErrBadClaimUID) {
			t.Errorf("CDISpec(%q) = %v, want ErrBadClaimUID", uid, err)
		}
		if err := dra.WriteCDISpec(dir, uid, nil); !errors.Is(err, dra.ErrBadClaimUID) {
			t.Errorf("WriteCDISpec(%q) = %v, want ErrBadClaimUID", uid, err)
		}
		if err := dra.RemoveCDISpec(dir, uid); !errors.Is(err, dra.ErrBadClaimUID) {
			t.Errorf("RemoveCDISpec(%q) = %v, want ErrBadClaimUID", uid, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Dir(dir)); len(entries) != 1 {
		t.Errorf("files appeared beside the spec dir: %v", entries)
	}
}
