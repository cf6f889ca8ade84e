package kubeletstub

import (
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"

	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// DRAClaim is a claim of gpuslice's DRA driver the stand-in kubelet has
// prepared: its UID, namespace and name, the pods holding it
// ("namespace/name", as PodUID takes them) and, per pod, the containers
// that reference it.
type DRAClaim struct {
	UID, Namespace, Name string
	Pods                 map[string][]string
}

// WriteDRACheckpoint writes dir/dra_manager_state as the kubelet's DRA
// manager does (its state package, checkpoint.dra.kubelet.k8s.io/v1: the
// claim list as a JSON string with its CRC-32), written to a new file
// renamed into place.
func WriteDRACheckpoint(dir string, claims []DRAClaim) error {
	type device struct {
		PoolName, DeviceName string
		RequestNames         []string
		CDIDeviceIDs         []string
	}
	type claimState struct {
		ClaimUID, ClaimName, Namespace string
		PodUIDs                        map[string]struct{}
		DriverState                    map[string]struct{ Devices []device }
	}
	list := make([]claimState, 0, len(claims))
	for _, c := range claims {
		pods := map[string]struct{}{}
		for p := range c.Pods {
			pods[PodUID(p)] = struct{}{}
		}
		list = append(list, claimState{ClaimUID: c.UID, ClaimName: c.Name, Namespace: c.Namespace, PodUIDs: pods,
			DriverState: map[string]struct{ Devices []device }{contract.DRADriverName: {Devices: []device{{
				PoolName: "node", DeviceName: "gpu-0", RequestNames: []string{"gpu"}, CDIDeviceIDs: []string{contract.DRACDIKind + "=" + c.UID},
			}}}}})
	}
	data, err := json.Marshal(struct {
		Kind               string `json:"kind"`
		APIVersion         string `json:"apiVersion"`
		ClaimInfoStateList []claimState
	}{"DRACheckpoint", "checkpoint.dra.kubelet.k8s.io/v1", list})
	if err != nil {
		return err
	}
	out, err := json.Marshal(struct {
		Data     string
		Checksum uint32
	}{string(data), crc32.ChecksumIEEE(data)})
	if err != nil {
		return err
	}
	path := filepath.Join(dir, "dra_manager_state")
	if err := os.WriteFile(path+".tmp", out, 0o600); err != nil {
		return fmt.Errorf("write DRA checkpoint: %w", err)
	}
	return os.Rename(path+".tmp", path)
}

// DRAPods are the pods holding claims, as pod-resources lists them: each
// container with the claims it references, by their CDI devices. Pods
// also lists containers that reference none (nil claims).
func DRAPods(claims []DRAClaim, containers map[string][]string) []*podresourcesapi.PodResources {
	byPod := map[string]*podresourcesapi.PodResources{}
	var order []string
	pod := func(p string) *podresourcesapi.PodResources {
		if byPod[p] == nil {
			ns, name, ok := strings.Cut(p, "/")
			if !ok {
				ns, name = "default", p
			}
			byPod[p] = &podresourcesapi.PodResources{Namespace: ns, Name: name}
			order = append(order, p)
		}
		return byPod[p]
	}
	refs := map[[2]string][]DRAClaim{}
	for _, c := range claims {
		for p, ctrs := range c.Pods {
			for _, ctr := range ctrs {
				refs[[2]string{p, ctr}] = append(refs[[2]string{p, ctr}], c)
			}
		}
	}
	for p, ctrs := range containers {
		for _, ctr := range ctrs {
			cr := &podresourcesapi.ContainerResources{Name: ctr}
			for _, c := range refs[[2]string{p, ctr}] {
				cr.DynamicResources = append(cr.DynamicResources, &podresourcesapi.DynamicResource{
					ClaimName: c.Name, ClaimNamespace: c.Namespace,
					ClaimResources: []*podresourcesapi.ClaimResource{{
						DriverName: contract.DRADriverName, PoolName: "node", DeviceName: "gpu-0",
						CdiDevices: []*podresourcesapi.CDIDevice{{Name: contract.DRACDIKind + "=" + c.UID}},
					}},
				})
			}
			pod(p).Containers = append(pod(p).Containers, cr)
		}
	}
	out := make([]*podresourcesapi.PodResources, 0, len(order))
	for _, p := range order {
		out = append(out, byPod[p])
	}
	return out
}
