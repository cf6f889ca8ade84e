package podpolicy

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/pkg/enforce"
	"github.com/gpuslice/gpuslice/pkg/node"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

func TestPoliciesFromAnnotations(t *testing.T) {
	srv := apiserver.Start(t)
	c := srv.Clientset(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ml"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	uids := map[string]string{}
	pod := func(name, node string, ann map[string]string) {
		t.Helper()
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ml", Annotations: ann},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: "busybox"}}},
		}
		made, err := c.CoreV1().Pods("ml").Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		uids[name] = string(made.UID)
	}
	pod("strict", "gpu-node", map[string]string{Annotation: "strict"})
	pod("burst", "gpu-node", map[string]string{Annotation: "burst"})
	pod("plain", "gpu-node", nil)
	pod("typo", "gpu-node", map[string]string{Annotation: "strickt"})
	pod("elsewhere", "other-node", map[string]string{Annotation: "strict"})

	w := New(srv.Client(t), "gpu-node", time.Hour, nil)
	if w.PodUIDs() != nil {
		t.Error("pod UIDs known before any list")
	}
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]enforce.Policy{"strict": enforce.Strict, "burst": enforce.Burst, "plain": "", "typo": "", "elsewhere": ""} {
		if got := w.Policy("ml", name); got != want {
			t.Errorf("policy of ml/%s = %q, want %q", name, got, want)
		}
	}
	// Pods are named by UID: the namespace of a process whose runtime
	// record is missing; a pod of another node is not.
	if ns, name, ok := w.Pod(uids["plain"]); !ok || ns != "ml" || name != "plain" {
		t.Errorf("Pod(uid of ml/plain) = %q, %q, %t", ns, name, ok)
	}
	if _, _, ok := w.Pod(uids["elsewhere"]); ok {
		t.Error("a pod of another node is named by its UID")
	}
	// And UIDs by name (DRA: a pod-resources entry's pod UID), the node's
	// pods only.
	got := w.PodUIDs()
	if len(got) != 4 || got[node.PodName{Namespace: "ml", Name: "burst"}] != uids["burst"] {
		t.Errorf("PodUIDs() = %v; want the four pods of gpu-node with their UIDs", got)
	}
}
