package podresources

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/gpudev"
	"github.com/gpuslice/gpuslice/pkg/node"
)

// Options configure a Client.
type Options struct {
	// Socket is the kubelet's pod-resources socket.
	Socket string
	// ResourceName limits answers to devices of this resource, and of the
	// slices of MIG instances (contract.IsSliceResource); MIG instances
	// held whole are listed whatever their resource (Instances).
	ResourceName string
	// DRADriver, when set, adds the DRA claims of this driver each
	// container holds (Kubernetes 1.34 and later list them; GA from 1.36),
	// and lists every container of every pod, holding or not: a pod's
	// container listed without a claim is known to hold none.
	DRADriver string
	// MaxMessageSize bounds one answer. The gRPC default of 4 MiB is too
	// small for List on nodes with many pods.
	MaxMessageSize int
	// CallTimeout bounds one call.
	CallTimeout time.Duration
	// MaxReconnectDelay bounds the wait between reconnection attempts after
	// the kubelet goes away (gRPC's own default is 120 s).
	MaxReconnectDelay time.Duration
}

// DefaultOptions returns the options the agent uses unless configured.
func DefaultOptions() Options {
	return Options{
		Socket:            contract.PodResourcesSocket,
		ResourceName:      contract.ResourceName,
		MaxMessageSize:    16 << 20,
		CallTimeout:       5 * time.Second,
		MaxReconnectDelay: 5 * time.Second,
	}
}

// Validate reports the first option that cannot work.
func (o Options) Validate() error {
	switch {
	case !filepath.IsAbs(o.Socket):
		return fmt.Errorf("pod-resources socket %q must be an absolute path", o.Socket)
	case o.ResourceName == "":
		return errors.New("pod-resources: resource name is empty")
	case o.MaxMessageSize < 1<<20:
		return fmt.Errorf("pod-resources: max message size %d is below 1 MiB", o.MaxMessageSize)
	case o.CallTimeout <= 0 || o.MaxReconnectDelay <= 0:
		return errors.New("pod-resources: call timeout and reconnect delay must be positive")
	}
	return nil
}

// Assignment is one container as pod-resources lists it (node.Assignment).
type Assignment = node.Assignment

// ErrGetUnsupported reports a kubelet without the Get call (it needs the
// KubeletPodResourcesGet feature gate); use List.
var ErrGetUnsupported = errors.New("kubelet does not serve pod-resources Get")

// Client is a long-lived pod-resources client. It is safe for concurrent
// use. The connection is made lazily and redialled after the kubelet goes
// away; calls made meanwhile fail fast.
type Client struct {
	opts   Options
	conn   *grpc.ClientConn
	client podresourcesapi.PodResourcesListerClient
}

// New creates a client. It does not wait for the kubelet.
func New(opts Options) (*Client, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	bo := backoff.DefaultConfig
	bo.BaseDelay = 100 * time.Millisecond
	bo.MaxDelay = opts.MaxReconnectDelay
	conn, err := grpc.NewClient("unix://"+opts.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(opts.MaxMessageSize)),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("pod-resources client for %s: %w", opts.Socket, err)
	}
	return &Client{opts: opts, conn: conn, client: podresourcesapi.NewPodResourcesListerClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// List returns every container on the node that holds devices of the
// resource or MIG instances (of any resource), ordered by namespace, pod
// and container.
func (c *Client) List(ctx context.Context) ([]Assignment, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	resp, err := c.client.List(ctx, &podresourcesapi.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("pod-resources List on %s: %w", c.opts.Socket, err)
	}
	var out []Assignment
	for _, p := range resp.GetPodResources() {
		out = append(out, c.assignments(p)...)
	}
	sortAssignments(out)
	return out, nil
}

// Get returns the containers of one pod that hold devices of the resource.
func (c *Client) Get(ctx context.Context, namespace, pod string) ([]Assignment, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	resp, err := c.client.Get(ctx, &podresourcesapi.GetPodResourcesRequest{PodNamespace: namespace, PodName: pod})
	if status.Code(err) == codes.Unimplemented {
		return nil, fmt.Errorf("%w: %w", ErrGetUnsupported, err)
	}
	if err != nil {
		return nil, fmt.Errorf("pod-resources Get %s/%s on %s: %w", namespace, pod, c.opts.Socket, err)
	}
	out := c.assignments(resp.GetPodResources())
	sortAssignments(out)
	return out, nil
}

func (c *Client) assignments(p *podresourcesapi.PodResources) []Assignment {
	var out []Assignment
	for _, ctr := range p.GetContainers() {
		var ids, instances []string
		for _, d := range ctr.GetDevices() {
			switch {
			case contract.IsSliceResource(c.opts.ResourceName, d.GetResourceName()):
				ids = append(ids, d.GetDeviceIds()...)
			default:
				// MIG instances, under whichever resource a device
				// plugin offered them: their device IDs are their MIG
				// UUIDs, as NVIDIA's plugin and gpuslice's name them.
				for _, id := range d.GetDeviceIds() {
					if gpudev.IsMIGUUID(id) {
						instances = append(instances, id)
					}
				}
			}
		}
		claims := c.claims(ctr)
		if len(ids) == 0 && len(instances) == 0 && c.opts.DRADriver == "" {
			continue
		}
		sort.Strings(ids)
		sort.Strings(instances)
		out = append(out, Assignment{Namespace: p.GetNamespace(), Pod: p.GetName(), Container: ctr.GetName(), DeviceIDs: ids, Instances: instances, Claims: claims})
	}
	return out
}

// claims are the UIDs of the DRA driver's claims a container holds, sorted
// and each once.
func (c *Client) claims(ctr *podresourcesapi.ContainerResources) []string {
	if c.opts.DRADriver == "" {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, dr := range ctr.GetDynamicResources() {
		for _, cr := range dr.GetClaimResources() {
			if cr.GetDriverName() != c.opts.DRADriver {
				continue
			}
			for _, d := range cr.GetCdiDevices() {
				if uid, ok := contract.ClaimUIDOfCDIDevice(d.GetName()); ok && !seen[uid] {
					seen[uid] = true
					out = append(out, uid)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

func sortAssignments(a []Assignment) {
	sort.Slice(a, func(i, j int) bool {
		if a[i].Namespace != a[j].Namespace {
			return a[i].Namespace < a[j].Namespace
		}
		if a[i].Pod != a[j].Pod {
			return a[i].Pod < a[j].Pod
		}
		return a[i].Container < a[j].Container
	})
}
