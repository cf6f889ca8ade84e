package gputop

import (
	"bytes"
	"strings"
	"testing"
)

// TestMIGInstances: a GPU in MIG mode shows its instances, their health,
// the memory in use on each and who holds them, instead of slices; a
// holder whose compute the agent cannot measure reads "unmeasured", never
// 0%.
func TestMIGInstances(t *testing.T) {
	t.Parallel()
	g := []string{"gpu", "2", "uuid", "GPU-2"}
	in := func(u, p string) []string {
		return append([]string{"mig_uuid", u, "mig_profile", p, "resource", "nvidia.com/mig-" + p}, g...)
	}
	m := Build([]Sample{
		s("gpuslice_device_mig_mode", 1, append([]string{"state", "current"}, g...)...),
		s("gpuslice_device_mig_mode", 1, append([]string{"state", "pending"}, g...)...),
		s("gpuslice_device_mig_mode", 0, "gpu", "3", "uuid", "GPU-3", "state", "current"),
		s("gpuslice_device_mig_mode", 1, "gpu", "3", "uuid", "GPU-3", "state", "pending"),
		s("gpuslice_mig_instance_info", 1, in("MIG-b", "3g.40gb")...),
		s("gpuslice_mig_instance_info", 1, in("MIG-a", "1g.10gb")...),
		s("gpuslice_mig_instance_healthy", 0, append([]string{"mig_uuid", "MIG-a"}, g...)...),
		s("gpuslice_mig_instance_healthy", 1, append([]string{"mig_uuid", "MIG-b"}, g...)...),
		s("gpuslice_mig_instance_memory_used_bytes", 2<<30, append([]string{"mig_uuid", "MIG-b"}, g...)...),
		s("gpuslice_container_slices", 1, "namespace", "ml", "pod", "infer", "container", "main", "gpu", "2", "uuid", "MIG-b"),
		s("gpuslice_container_compute_unmeasured", 1, "namespace", "ml", "pod", "infer", "container", "main", "gpu", "2", "uuid", "MIG-b"),
		s("gpuslice_container_compute_limit_ratio", 1, "namespace", "ml", "pod", "infer", "container", "main", "gpu", "2", "uuid", "MIG-b"),
	})
	var b bytes.Buffer
	if err := GPUs(&b, m); err != nil {
		t.Fatal(err)
	}
	want := `NODE    GPU  MODEL            HEALTHY  SLICES(ALLOCATED/TOTAL)  MEMORY(USED/TOTAL)  UTILIZATION  UUID
node-a  2    - (MIG enabled)  true     -                        -                   -            GPU-2
node-a  2      MIG 1g.10gb    false    -                        -                   -            MIG-a
node-a  2      MIG 3g.40gb    true     -                        -                   -            MIG-b
node-a  3    - (MIG pending)  true     -                        -                   -            GPU-3
`
	if b.String() != want {
		t.Errorf("top gpus:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	if err := DescribeNode(&b, m, "node-a", now); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"MIG:          enabled", "1g.10gb  MIG-a  nvidia.com/mig-1g.10gb  false    0.0Gi        -",
		"3g.40gb  MIG-b  nvidia.com/mig-3g.40gb  true     2.0Gi        ml/infer/main (unmeasured)"} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("describe lacks %q:\n%s", line, b.String())
		}
	}
	b.Reset()
	if err := Pods(&b, m, "ml", now, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "unmeasured/100%") {
		t.Errorf("pods: the MIG holder's compute reads as a number:\n%s", b.String())
	}
}
