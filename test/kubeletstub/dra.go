package kubeletstub

import (
	"strings"

	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// DRAClaim is a claim of gpuslice's DRA driver the stand-in kubelet has
// prepared: its UID, namespace and name, the pods holding it
// ("namespace/name", as PodUID takes them) and, per pod, the containers
// that reference it. The stand-in keeps no DRA checkpoint: the agent does
// not read the kubelet's.
type DRAClaim struct {
	UID, Namespace, Name string
	Pods                 map[string][]string
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
