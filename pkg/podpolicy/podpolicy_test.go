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

// TestRunWatches: Run lists once and then follows the node's pods by
// watch: a pod created, annotated, and deleted after the list is known at
// once, though the interval (an hour) never comes round; a pod of another
// node never is.
func TestRunWatches(t *testing.T) {
	srv := apiserver.Start(t)
	c := srv.Clientset(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := New(srv.Client(t), "gpu-node", time.Hour, nil)
	go w.Run(ctx)
	waitUntil := func(what string, ok func() bool) {
		t.Helper()
		for !ok() {
			if ctx.Err() != nil {
				t.Fatalf("%s: not within the test's minute", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitUntil("the first list", func() bool { return w.PodUIDs() != nil })
	mk := func(name, nodeName string) *corev1.Pod {
		p, err := c.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "main", Image: "busybox"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := mk("late", "gpu-node")
	other := mk("other", "other-node")
	waitUntil("the new pod named by its UID", func() bool { _, _, ok := w.Pod(string(p.UID)); return ok })
	patch := []byte(`{"metadata":{"annotations":{"` + Annotation + `":"strict"}}}`)
	if _, err := c.CoreV1().Pods("default").Patch(ctx, "late", "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil("its annotation", func() bool { return w.Policy("default", "late") == enforce.Strict })
	if err := c.CoreV1().Pods("default").Delete(ctx, "late", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	waitUntil("its deletion", func() bool { _, _, ok := w.Pod(string(p.UID)); return !ok })
	if w.Policy("default", "late") != "" || w.PodUIDs()[node.PodName{Namespace: "default", Name: "late"}] != "" {
		t.Error("a deleted pod keeps its policy or UID")
	}
	if _, _, ok := w.Pod(string(other.UID)); ok {
		t.Error("a pod of another node is known")
	}
}
