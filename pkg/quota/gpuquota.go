package quota

import (
	"fmt"

	"github.com/gpuslice/gpuslice/api/v1alpha1"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// gpuQuota is a GPUQuota as listed (raw, written back with a new status)
// and read into the API's types (obj); err says why its spec is invalid.
type gpuQuota struct {
	raw *unstructured.Unstructured
	obj *v1alpha1.GPUQuota
	err error
}

// parseQuota reads a listed GPUQuota into the API's types. Its metadata is
// always read; a spec that does not parse or validate is q.err, and a
// status that does not parse is left empty.
func parseQuota(u *unstructured.Unstructured) gpuQuota {
	obj := &v1alpha1.GPUQuota{
		TypeMeta: metav1.TypeMeta{APIVersion: u.GetAPIVersion(), Kind: u.GetKind()},
		ObjectMeta: metav1.ObjectMeta{Name: u.GetName(), Namespace: u.GetNamespace(), UID: u.GetUID(),
			Generation: u.GetGeneration(), ResourceVersion: u.GetResourceVersion()},
	}
	q := gpuQuota{raw: u, obj: obj}
	spec, ok := u.Object["spec"].(map[string]any)
	switch {
	case !ok:
		q.err = fmt.Errorf("spec is %T, not an object", u.Object["spec"])
	default:
		if q.err = runtime.DefaultUnstructuredConverter.FromUnstructured(spec, &obj.Spec); q.err == nil {
			q.err = obj.Spec.Validate()
		}
	}
	if st, ok := u.Object["status"].(map[string]any); ok {
		if runtime.DefaultUnstructuredConverter.FromUnstructured(st, &obj.Status) != nil {
			obj.Status = v1alpha1.GPUQuotaStatus{}
		}
	}
	return q
}
