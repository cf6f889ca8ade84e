// Package kube is the agent's minimal Kubernetes client: get and patch its
// Node, list the pods on its node, and post Events, as plain HTTP with the
// in-cluster service account or a kubeconfig. It is not client-go on
// purpose: with client-go the agent idled at 32 to 57 MiB, against 20 MiB
// without (measured; see docs/benchmarks.md), for four calls.
package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// ErrNoCluster reports an agent with no Kubernetes configuration.
var ErrNoCluster = errors.New("no --kubeconfig and not running in a cluster")

// serviceAccountDir is where Kubernetes mounts a pod's service account.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// UserAgent is the User-Agent of every request the agent's client makes:
// what the API server's audit log and metrics name it by.
const UserAgent = "gpuslice-agent"

// Client talks to one API server.
type Client struct {
	server    string
	http      *http.Client
	watchHTTP *http.Client // no overall timeout: a watch is a long response
	token     string
	tokenFile string // re-read on every request: bound tokens rotate
	userAgent string
}

// New builds a client from kubeconfig, or from the pod's service account
// when kubeconfig is empty. It makes no request.
func New(kubeconfig string) (*Client, error) {
	switch {
	case kubeconfig != "":
		return fromKubeconfig(kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		return inCluster()
	}
	return nil, ErrNoCluster
}

func inCluster() (*Client, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	ca, err := os.ReadFile(filepath.Join(serviceAccountDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	tlsCfg, err := tlsConfig(ca, false)
	if err != nil {
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	return newClient("https://"+net.JoinHostPort(host, port), tlsCfg, "", filepath.Join(serviceAccountDir, "token")), nil
}

// kubeconfig is the part of a kubeconfig file the agent understands.
type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Contexts       []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
	Clusters []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData string `json:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			Token                 string         `json:"token"`
			TokenFile             string         `json:"tokenFile"`
			ClientCertificate     string         `json:"client-certificate"`
			ClientCertificateData string         `json:"client-certificate-data"`
			ClientKey             string         `json:"client-key"`
			ClientKeyData         string         `json:"client-key-data"`
			Exec                  map[string]any `json:"exec"`
			AuthProvider          map[string]any `json:"auth-provider"`
		} `json:"user"`
	} `json:"users"`
}

func fromKubeconfig(path string) (*Client, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the operator's --kubeconfig
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig: %w", err)
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	fail := func(format string, args ...any) (*Client, error) {
		return nil, fmt.Errorf("kubeconfig %s: "+format, append([]any{path}, args...)...)
	}
	var clusterName, userName string
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			clusterName, userName = c.Context.Cluster, c.Context.User
		}
	}
	if clusterName == "" {
		return fail("current-context %q not found", kc.CurrentContext)
	}
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(filepath.Dir(path), p)
	}
	var server string
	var tlsCfg *tls.Config
	for _, c := range kc.Clusters {
		if c.Name != clusterName {
			continue
		}
		ca, err := dataOrFile(c.Cluster.CertificateAuthorityData, rel(c.Cluster.CertificateAuthority))
		if err != nil {
			return fail("certificate authority: %w", err)
		}
		server = strings.TrimSuffix(c.Cluster.Server, "/")
		if tlsCfg, err = tlsConfig(ca, c.Cluster.InsecureSkipTLSVerify); err != nil {
			return fail("%w", err)
		}
	}
	if server == "" {
		return fail("cluster %q not found or has no server", clusterName)
	}
	var token, tokenFile string
	for _, u := range kc.Users {
		if u.Name != userName {
			continue
		}
		if u.User.Exec != nil || u.User.AuthProvider != nil {
			return fail("user %q uses an exec or auth-provider plugin, which gpu-agent does not run; use a token or client certificate", userName)
		}
		token, tokenFile = u.User.Token, rel(u.User.TokenFile)
		cert, err := dataOrFile(u.User.ClientCertificateData, rel(u.User.ClientCertificate))
		if err != nil {
			return fail("client certificate: %w", err)
		}
		key, err := dataOrFile(u.User.ClientKeyData, rel(u.User.ClientKey))
		if err != nil {
			return fail("client key: %w", err)
		}
		if len(cert) > 0 {
			pair, err := tls.X509KeyPair(cert, key)
			if err != nil {
				return fail("client certificate: %w", err)
			}
			tlsCfg.Certificates = []tls.Certificate{pair}
		}
	}
	return newClient(server, tlsCfg, token, tokenFile), nil
}

func dataOrFile(b64, file string) ([]byte, error) {
	if b64 != "" {
		return base64.StdEncoding.DecodeString(b64)
	}
	if file != "" {
		return os.ReadFile(file) //nolint:gosec // a path from the operator's kubeconfig
	}
	return nil, nil
}

func tlsConfig(ca []byte, insecure bool) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure} //nolint:gosec // only when the kubeconfig asks for it
	if len(ca) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return nil, errors.New("certificate authority holds no PEM certificate")
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

func newClient(server string, tlsCfg *tls.Config, token, tokenFile string) *Client {
	// HTTP/2, as client-go speaks it: one connection carries every
	// request (a custom TLS config turns Go's automatic HTTP/2 off).
	tr := &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment, MaxIdleConns: 4, IdleConnTimeout: 90 * time.Second, ForceAttemptHTTP2: true}
	return &Client{server: server, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}, watchHTTP: &http.Client{Transport: tr},
		token: token, tokenFile: tokenFile, userAgent: UserAgent}
}

// APIError is an error status from the API server.
type APIError struct {
	Code    int
	Message string
}

// Error implements error.
func (e *APIError) Error() string { return fmt.Sprintf("kubernetes API: %d: %s", e.Code, e.Message) }

// IsNotFound reports a 404 from the API server.
func IsNotFound(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.Code == http.StatusNotFound
}

// Retriable reports an error that may pass: a conflict, throttling, a
// server error, or no answer at all.
func Retriable(err error) bool {
	var e *APIError
	if errors.As(err, &e) {
		return e.Code == http.StatusConflict || e.Code == http.StatusTooManyRequests || e.Code >= 500
	}
	return err != nil
}

func (c *Client) do(ctx context.Context, method, path, contentType string, body, into any) error {
	return c.doAccept(ctx, method, path, "application/json", contentType, body, into)
}

// metadataOnly asks the API server for lists of objects' metadata alone
// (PartialObjectMetadataList), falling back to whole objects.
const metadataOnly = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"

func (c *Client) doAccept(ctx context.Context, method, path, accept, contentType string, body, into any) error {
	req, err := c.request(ctx, method, path, accept, contentType, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return apiError(resp.StatusCode, data)
	}
	if into != nil {
		return json.Unmarshal(data, into)
	}
	return nil
}

// request builds an authenticated request (the token file read anew).
func (c *Client) request(ctx context.Context, method, path, accept, contentType string, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("User-Agent", c.userAgent)
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	token := c.token
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read token: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return req, nil
}

// apiError reads an error status's message.
func apiError(code int, data []byte) error {
	var st struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(data, &st)
	if st.Message == "" {
		st.Message = http.StatusText(code)
	}
	return &APIError{Code: code, Message: st.Message}
}

// Meta is the part of an object's metadata the agent reads.
type Meta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	UID         string            `json:"uid,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// ResourceVersion is the object's version, which a watch resumes
	// from.
	ResourceVersion string          `json:"resourceVersion,omitempty"`
	ManagedFields   []ManagedFields `json:"managedFields,omitempty"`
}

// ManagedFields is one field manager's entry in an object's
// managedFields: which fields it set, by apply or by update.
type ManagedFields struct {
	Manager   string          `json:"manager"`
	Operation string          `json:"operation"`
	FieldsV1  json.RawMessage `json:"fieldsV1,omitempty"`
}

// LabelOwners returns, for each label some field manager set, the
// managers that did, from the object's managedFields.
func (m Meta) LabelOwners() map[string][]string {
	out := map[string][]string{}
	for _, e := range m.ManagedFields {
		var f struct {
			Metadata struct {
				Labels map[string]json.RawMessage `json:"f:labels"`
			} `json:"f:metadata"`
		}
		if json.Unmarshal(e.FieldsV1, &f) != nil {
			continue // not fieldsV1 as the API server writes it: owns nothing known
		}
		for k := range f.Metadata.Labels {
			if key, ok := strings.CutPrefix(k, "f:"); ok && !slices.Contains(out[key], e.Manager) {
				out[key] = append(out[key], e.Manager)
			}
		}
	}
	return out
}

// Node returns a node's metadata, its managed fields included.
func (c *Client) Node(ctx context.Context, name string) (Meta, error) {
	var n struct {
		Metadata Meta `json:"metadata"`
	}
	if err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name), "", nil, &n); err != nil {
		return Meta{}, err
	}
	return n.Metadata, nil
}

// PatchNode applies a JSON merge patch to a node, as fieldManager.
func (c *Client) PatchNode(ctx context.Context, name string, patch any, fieldManager string) error {
	return c.do(ctx, http.MethodPatch, "/api/v1/nodes/"+url.PathEscape(name)+"?fieldManager="+url.QueryEscape(fieldManager),
		"application/merge-patch+json", patch, nil)
}

// PatchNodeStatus applies a JSON merge patch to a node's status, as
// fieldManager.
func (c *Client) PatchNodeStatus(ctx context.Context, name string, patch any, fieldManager string) error {
	return c.do(ctx, http.MethodPatch, "/api/v1/nodes/"+url.PathEscape(name)+"/status?fieldManager="+url.QueryEscape(fieldManager),
		"application/merge-patch+json", patch, nil)
}

// ApplyNodeLabels sets a node's labels by server-side apply, as
// fieldManager: the node's managedFields name the manager as an owner of
// exactly these labels, and labels it applied before and no longer applies
// are removed by the API server (unless another manager set them too).
// With force it takes a label another manager set to another value;
// without, that is a conflict (409) and nothing changes.
func (c *Client) ApplyNodeLabels(ctx context.Context, name string, labels map[string]string, fieldManager string, force bool) error {
	obj := map[string]any{
		"apiVersion": "v1", "kind": "Node",
		"metadata": map[string]any{"name": name, "labels": labels},
	}
	q := url.Values{"fieldManager": {fieldManager}, "force": {strconv.FormatBool(force)}}.Encode()
	return c.do(ctx, http.MethodPatch, "/api/v1/nodes/"+url.PathEscape(name)+"?"+q, "application/apply-patch+yaml", obj, nil)
}

// PodsOnNode returns the metadata of the pods bound to a node, listed as
// metadata only.
func (c *Client) PodsOnNode(ctx context.Context, node string) ([]Meta, error) {
	pods, _, err := c.ListPodsOnNode(ctx, node)
	return pods, err
}

// ListPodsOnNode lists the pods bound to a node, as metadata only, and the
// list's resource version, from which WatchPodsOnNode follows it.
func (c *Client) ListPodsOnNode(ctx context.Context, node string) ([]Meta, string, error) {
	// Metadata only: the annotations are all the agent reads, and a
	// node's full pod specs and statuses are tens of times larger.
	var l struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []struct {
			Metadata Meta `json:"metadata"`
		} `json:"items"`
	}
	path := "/api/v1/pods?" + url.Values{"fieldSelector": {"spec.nodeName=" + node}}.Encode()
	if err := c.doAccept(ctx, http.MethodGet, path, metadataOnly, "", nil, &l); err != nil {
		return nil, "", err
	}
	out := make([]Meta, len(l.Items))
	for i, it := range l.Items {
		out[i] = it.Metadata
	}
	return out, l.Metadata.ResourceVersion, nil
}

// WatchEvent is one change to a watched pod: Type is ADDED, MODIFIED or
// DELETED.
type WatchEvent struct {
	Type   string
	Object Meta
}

// ErrExpired reports a watch whose resource version the API server no
// longer keeps (410 Gone): list again.
var ErrExpired = errors.New("resource version expired")

// WatchTimeout is how long the API server keeps one watch open; the
// caller then watches again from where it got to.
const WatchTimeout = 5 * time.Minute

// metadataOnlyObjects asks for watch events' objects as metadata alone.
const metadataOnlyObjects = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"

// WatchPodsOnNode follows the pods bound to a node from resourceVersion,
// as metadata only, calling fn for each change, until the API server ends
// the watch (after WatchTimeout), ctx ends or the stream fails. It returns
// the resource version it got to (bookmarks included), from which the
// next watch resumes, and ErrExpired when that version is gone.
func (c *Client) WatchPodsOnNode(ctx context.Context, node, resourceVersion string, fn func(WatchEvent)) (string, error) {
	q := url.Values{
		"fieldSelector": {"spec.nodeName=" + node}, "watch": {"true"}, "resourceVersion": {resourceVersion},
		"allowWatchBookmarks": {"true"}, "timeoutSeconds": {strconv.Itoa(int(WatchTimeout / time.Second))},
	}
	ctx, cancel := context.WithTimeout(ctx, WatchTimeout+30*time.Second)
	defer cancel()
	req, err := c.request(ctx, http.MethodGet, "/api/v1/pods?"+q.Encode(), metadataOnlyObjects, "", nil)
	if err != nil {
		return resourceVersion, err
	}
	resp, err := c.watchHTTP.Do(req)
	if err != nil {
		return resourceVersion, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode == http.StatusGone {
			return resourceVersion, ErrExpired
		}
		return resourceVersion, apiError(resp.StatusCode, data)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev struct {
			Type   string          `json:"type"`
			Object json.RawMessage `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return resourceVersion, nil // the API server's timeout
			}
			return resourceVersion, fmt.Errorf("watch pods on node %s: %w", node, err)
		}
		if ev.Type == "ERROR" {
			var st struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			_ = json.Unmarshal(ev.Object, &st)
			if st.Code == http.StatusGone {
				return resourceVersion, ErrExpired
			}
			return resourceVersion, &APIError{Code: st.Code, Message: st.Message}
		}
		var obj struct {
			Metadata Meta `json:"metadata"`
		}
		if err := json.Unmarshal(ev.Object, &obj); err != nil {
			return resourceVersion, fmt.Errorf("watch pods on node %s: %w", node, err)
		}
		if obj.Metadata.ResourceVersion != "" {
			resourceVersion = obj.Metadata.ResourceVersion
		}
		if ev.Type != "BOOKMARK" {
			fn(WatchEvent{Type: ev.Type, Object: obj.Metadata})
		}
	}
}

// listMeta lists the objects at path as metadata only.
func (c *Client) listMeta(ctx context.Context, path string) ([]Meta, error) {
	var l struct {
		Items []struct {
			Metadata Meta `json:"metadata"`
		} `json:"items"`
	}
	if err := c.doAccept(ctx, http.MethodGet, path, metadataOnly, "", nil, &l); err != nil {
		return nil, err
	}
	out := make([]Meta, len(l.Items))
	for i, it := range l.Items {
		out[i] = it.Metadata
	}
	return out, nil
}

// Event is what the agent says about a pod.
type Event struct {
	Namespace, Pod, PodUID string
	Type, Reason, Message  string
	Component, Host        string
	Count                  int
	Time                   time.Time
}

// PostEvent creates a core/v1 Event about a pod.
func (c *Client) PostEvent(ctx context.Context, e Event) error {
	ts := e.Time.UTC().Format(time.RFC3339)
	body := map[string]any{
		"apiVersion": "v1", "kind": "Event",
		"metadata":       map[string]any{"generateName": e.Pod + ".", "namespace": e.Namespace},
		"involvedObject": map[string]any{"apiVersion": "v1", "kind": "Pod", "namespace": e.Namespace, "name": e.Pod, "uid": e.PodUID},
		"type":           e.Type, "reason": e.Reason, "message": e.Message,
		"source":         map[string]any{"component": e.Component, "host": e.Host},
		"firstTimestamp": ts, "lastTimestamp": ts, "count": max(e.Count, 1),
		"reportingComponent": e.Component, "reportingInstance": e.Host,
	}
	return c.do(ctx, http.MethodPost, "/api/v1/namespaces/"+url.PathEscape(e.Namespace)+"/events", "application/json", body, nil)
}

// User is who a token belongs to, as a TokenReview tells it.
type User struct {
	Username string              `json:"username"`
	UID      string              `json:"uid,omitempty"`
	Groups   []string            `json:"groups,omitempty"`
	Extra    map[string][]string `json:"extra,omitempty"`
}

// ReviewToken asks the API server who a bearer token belongs to (a
// TokenReview, as the kubelet and kube-rbac-proxy do). It returns false,
// with no error, for a token the API server does not accept.
func (c *Client) ReviewToken(ctx context.Context, token string) (User, bool, error) {
	req := map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
		"spec": map[string]any{"token": token},
	}
	var out struct {
		Status struct {
			Authenticated bool   `json:"authenticated"`
			User          User   `json:"user"`
			Error         string `json:"error"`
		} `json:"status"`
	}
	if err := c.do(ctx, http.MethodPost, "/apis/authentication.k8s.io/v1/tokenreviews", "application/json", req, &out); err != nil {
		return User{}, false, fmt.Errorf("token review: %w", err)
	}
	return out.Status.User, out.Status.Authenticated, nil
}

// Authorize asks the API server whether user may use verb on a
// non-resource path such as /metrics (a SubjectAccessReview).
func (c *Client) Authorize(ctx context.Context, user User, verb, path string) (bool, error) {
	req := map[string]any{
		"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
		"spec": map[string]any{
			"user": user.Username, "uid": user.UID, "groups": user.Groups, "extra": user.Extra,
			"nonResourceAttributes": map[string]string{"verb": verb, "path": path},
		},
	}
	var out struct {
		Status struct {
			Allowed bool `json:"allowed"`
		} `json:"status"`
	}
	if err := c.do(ctx, http.MethodPost, "/apis/authorization.k8s.io/v1/subjectaccessreviews", "application/json", req, &out); err != nil {
		return false, fmt.Errorf("subject access review: %w", err)
	}
	return out.Status.Allowed, nil
}
