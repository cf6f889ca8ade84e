package kube

import (
	"context"
	"net/http"
	"net/url"
)

// Nodes returns the metadata of every node, listed as metadata only.
func (c *Client) Nodes(ctx context.Context) ([]Meta, error) {
	return c.listMeta(ctx, "/api/v1/nodes")
}

// DeleteDaemonSet deletes a DaemonSet in the foreground: the object stays,
// marked for deletion, until the garbage collector has deleted its pods.
// A DaemonSet already gone is not an error.
func (c *Client) DeleteDaemonSet(ctx context.Context, namespace, name string) error {
	body := map[string]any{"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}
	err := c.do(ctx, http.MethodDelete, "/apis/apps/v1/namespaces/"+url.PathEscape(namespace)+"/daemonsets/"+url.PathEscape(name),
		"application/json", body, nil)
	if IsNotFound(err) {
		return nil
	}
	return err
}

// DaemonSetExists reports whether a DaemonSet (perhaps marked for
// deletion) still exists.
func (c *Client) DaemonSetExists(ctx context.Context, namespace, name string) (bool, error) {
	err := c.do(ctx, http.MethodGet, "/apis/apps/v1/namespaces/"+url.PathEscape(namespace)+"/daemonsets/"+url.PathEscape(name), "", nil, nil)
	if IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// DeleteResourceSlices deletes every ResourceSlice a DRA driver published;
// a cluster without resource.k8s.io/v1 has none.
func (c *Client) DeleteResourceSlices(ctx context.Context, driver string) error {
	err := c.do(ctx, http.MethodDelete, "/apis/resource.k8s.io/v1/resourceslices?fieldSelector="+url.QueryEscape("spec.driver="+driver), "", nil, nil)
	if IsNotFound(err) {
		return nil
	}
	return err
}
