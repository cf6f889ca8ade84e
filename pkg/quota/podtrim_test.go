package quota

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestTrimmedPodsKeepWhatTheControllerReads: what the cache keeps of a pod
// decides the same slices, claims, phase, start, opt-out, idle mark and
// owner as the whole pod, and the bulk (managed fields, environment,
// volumes, other annotations, statuses) is gone.
func TestTrimmedPodsKeepWhatTheControllerReads(t *testing.T) {
	t.Parallel()
	start := metav1.NewTime(time.Unix(1e9, 0))
	claim, job := "c-1", true
	big := strings.Repeat("x", 4096)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "p", Namespace: "ns", UID: "u-1", ResourceVersion: "7",
			Labels:          map[string]string{"app": "train"},
			Annotations:     map[string]string{AnnotationOptOut: "true", AnnotationIdleSince: "2026-12-07T10:00:00Z", "kubectl.kubernetes.io/last-applied-configuration": big},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Job", Name: "j", UID: "j-1", Controller: &job}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{}}`)}}},
		},
		Spec: corev1.PodSpec{
			NodeName: "n-1",
			Containers: []corev1.Container{
				{Name: "main", Image: "img", Env: []corev1.EnvVar{{Name: "BIG", Value: big}},
					Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/vgpu": resource.MustParse("3")}}},
				{Name: "side", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{"nvidia.com/vgpu": resource.MustParse("1")}}},
			},
			Volumes:        []corev1.Volume{{Name: "v"}},
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu"}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, StartTime: &start,
			ResourceClaimStatuses: []corev1.PodResourceClaimStatus{{Name: "gpu", ResourceClaimName: &claim}},
			Conditions:            []corev1.PodCondition{{Type: corev1.PodReady, Message: big}},
		},
	}
	obj, err := trimPod(p)
	if err != nil {
		t.Fatal(err)
	}
	tp := obj.(*corev1.Pod)
	c := &Controller{opts: Options{Resource: "nvidia.com/vgpu"}}
	if got, want := c.slices(tp), c.slices(p); got != want || got != 4 {
		t.Errorf("slices %d, want %d", got, want)
	}
	if got := podClaims(tp); len(got) != 1 || got[0] != claim {
		t.Errorf("claims %v", got)
	}
	if tp.Status.Phase != corev1.PodRunning || !tp.Status.StartTime.Equal(&start) || tp.Spec.NodeName != "n-1" {
		t.Errorf("phase, start or node lost: %+v", tp.Status)
	}
	if tp.Annotations[AnnotationOptOut] != "true" || tp.Annotations[AnnotationIdleSince] == "" || len(tp.Annotations) != 2 {
		t.Errorf("annotations %v: want gpuslice's two only", tp.Annotations)
	}
	if ref := metav1.GetControllerOf(tp); ref == nil || ref.UID != "j-1" || tp.UID != "u-1" || tp.ResourceVersion != "7" || tp.Labels["app"] != "train" {
		t.Errorf("identity or owner lost: %+v", tp.ObjectMeta)
	}
	if tp.ManagedFields != nil || tp.Spec.Containers[0].Env != nil || tp.Spec.Volumes != nil || tp.Status.Conditions != nil {
		t.Errorf("the bulk was kept: %+v", tp)
	}
	if before, after := p.Size(), tp.Size(); after*4 > before {
		t.Errorf("trimmed pod is %d bytes of %d", after, before)
	}
	if tomb, _ := trimPod("not a pod"); tomb != "not a pod" {
		t.Errorf("a non-pod was changed: %v", tomb)
	}
}
