package quota

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// trimPod keeps of a pod what the controller and its Kueue reclaimer read
// (identity, owners, labels, gpuslice's own annotations, each container's
// name and resources, its claims, phase and start time) and drops the rest
// (managed fields, volumes, environment, probes, conditions, container
// statuses) before the informer caches it: at 24,000 pods the cached pods
// were most of the controller's memory. Anything but a pod (a tombstone of
// a deleted one) passes as it is.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	t := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion, Generation: p.Generation,
			CreationTimestamp: p.CreationTimestamp, DeletionTimestamp: p.DeletionTimestamp,
			Labels: p.Labels, OwnerReferences: p.OwnerReferences,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, ResourceClaims: p.Spec.ResourceClaims},
		Status: corev1.PodStatus{Phase: p.Status.Phase, StartTime: p.Status.StartTime, ResourceClaimStatuses: p.Status.ResourceClaimStatuses},
	}
	for k, v := range p.Annotations {
		if strings.HasPrefix(k, "gpuslice.io/") {
			if t.Annotations == nil {
				t.Annotations = map[string]string{}
			}
			t.Annotations[k] = v
		}
	}
	t.Spec.Containers = make([]corev1.Container, len(p.Spec.Containers))
	for i, c := range p.Spec.Containers {
		t.Spec.Containers[i] = corev1.Container{Name: c.Name, Resources: c.Resources}
	}
	return t, nil
}
