package kube_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/test/apiserver"
)

// TestPodsOnNodeListsMetadataOnly: the API server answers the agent's pod
// list with metadata alone (PartialObjectMetadataList: no specs, no
// statuses), and PodsOnNode still gets each pod's annotations, only for
// its node.
func TestPodsOnNodeListsMetadataOnly(t *testing.T) {
	srv := apiserver.Start(t)
	cs := srv.Clientset(t)
	ctx := context.Background()
	for _, p := range []struct{ name, node string }{{"mine", "n1"}, {"theirs", "n2"}} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: "default", Annotations: map[string]string{"gpuslice.io/compute-policy": "strict"}},
			Spec:       corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}
		if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c := srv.Client(t)
	var raw struct {
		Kind  string `json:"kind"`
		Items []struct {
			Metadata kube.Meta       `json:"metadata"`
			Spec     json.RawMessage `json:"spec"`
		} `json:"items"`
	}
	if err := kube.DoAccept(c, ctx, http.MethodGet, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", kube.MetadataOnly, "", nil, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Kind != "PartialObjectMetadataList" || len(raw.Items) != 1 || raw.Items[0].Spec != nil {
		t.Fatalf("the list is %q with items %+v, want PartialObjectMetadataList with one item and no spec", raw.Kind, raw.Items)
	}
	pods, err := c.PodsOnNode(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 || pods[0].Name != "mine" || pods[0].Annotations["gpuslice.io/compute-policy"] != "strict" {
		t.Errorf("PodsOnNode(n1) = %+v", pods)
	}
}

// TestSpeaksHTTP2: the agent's client multiplexes its requests over one
// HTTP/2 connection, as client-go does, although it sets its own TLS
// configuration (which turns Go's automatic HTTP/2 off).
func TestSpeaksHTTP2(t *testing.T) {
	srv := apiserver.Start(t)
	major, err := kube.ProtoMajor(srv.Client(t))
	if err != nil {
		t.Fatal(err)
	}
	if major != 2 {
		t.Errorf("HTTP/%d to the API server, want HTTP/2", major)
	}
}
