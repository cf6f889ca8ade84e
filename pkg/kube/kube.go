// Package kube is the agent's minimal Kubernetes client: get and patch its
// Node, list the pods on its node, and write Events. It speaks core/v1
// only, over client-go's REST client, because client-go's typed clientset
// registers every API group at start and tripled the agent's resident
// memory (19.9 MiB to 57 MiB) for three calls.
package kube

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Scheme knows core/v1 and nothing else.
var Scheme = newScheme()

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		panic(fmt.Sprintf("register core/v1: %v", err)) // a programming error, caught by any test
	}
	metav1.AddToGroupVersion(s, corev1.SchemeGroupVersion)
	return s
}

// Client is a core/v1 client.
type Client struct {
	rc *rest.RESTClient
}

// ErrNoCluster reports an agent with no Kubernetes configuration.
var ErrNoCluster = fmt.Errorf("no --kubeconfig and not running in a cluster")

// Config loads the client configuration from kubeconfig, or the in-cluster
// one when it is empty.
func Config(kubeconfig string) (*rest.Config, error) {
	switch {
	case kubeconfig != "":
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config: %w", err)
		}
		return cfg, nil
	}
	return nil, ErrNoCluster
}

// New builds a client. It makes no request.
func New(cfg *rest.Config) (*Client, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = serializer.NewCodecFactory(Scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = "gpuslice-agent"
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &Client{rc: rc}, nil
}

// Node gets a node.
func (c *Client) Node(ctx context.Context, name string) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := c.rc.Get().Resource("nodes").Name(name).Do(ctx).Into(n)
	return n, err
}

// PatchNode applies a JSON merge patch to a node, as fieldManager.
func (c *Client) PatchNode(ctx context.Context, name string, patch []byte, fieldManager string) error {
	return c.rc.Patch(types.MergePatchType).Resource("nodes").Name(name).
		Param("fieldManager", fieldManager).Body(patch).Do(ctx).Error()
}

// PodsOnNode lists the pods bound to a node, in every namespace.
func (c *Client) PodsOnNode(ctx context.Context, node string) (*corev1.PodList, error) {
	l := &corev1.PodList{}
	err := c.rc.Get().Resource("pods").
		Param("fieldSelector", fields.OneTermEqualSelector("spec.nodeName", node).String()).
		Do(ctx).Into(l)
	return l, err
}

// EventSink writes Events for client-go's event broadcaster.
type EventSink struct{ c *Client }

// Events returns the client's event sink.
func (c *Client) Events() *EventSink { return &EventSink{c: c} }

// Create creates an event in its own namespace.
func (s *EventSink) Create(e *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.c.rc.Post().Namespace(e.Namespace).Resource("events").Body(e).Do(context.Background()).Into(out)
	return out, err
}

// Update replaces an event.
func (s *EventSink) Update(e *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.c.rc.Put().Namespace(e.Namespace).Resource("events").Name(e.Name).Body(e).Do(context.Background()).Into(out)
	return out, err
}

// Patch patches an event (the broadcaster's aggregation of repeats).
func (s *EventSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.c.rc.Patch(types.StrategicMergePatchType).Namespace(e.Namespace).Resource("events").Name(e.Name).Body(data).Do(context.Background()).Into(out)
	return out, err
}
