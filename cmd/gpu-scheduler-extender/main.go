// Command gpu-scheduler-extender is a kube-scheduler extender that places
// a pod asking for slices (nvidia.com/vgpu) only where one GPU holds each
// of its containers' requests, from the free slices per GPU that each
// node's gpu-agent publishes. See docs/scheduling.md for the scheduler
// configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/extender"
)

var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

type config struct {
	kubeconfig, listen, resource, logLevel string
	assumeTTL, recheckAfter                time.Duration
}

func parse(args []string, stderr io.Writer) (config, error) {
	c := config{listen: ":9451", resource: contract.ResourceName, logLevel: "info", assumeTTL: 30 * time.Second, recheckAfter: 2 * time.Second}
	fs := flag.NewFlagSet("gpu-scheduler-extender", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig `file` (in-cluster config when empty)")
	fs.StringVar(&c.listen, "listen-address", c.listen, "`address` serving the scheduler's calls (/filter, /prioritize) and /healthz, /readyz")
	fs.StringVar(&c.resource, "resource-name", c.resource, "the extended resource of slices the agents offer")
	fs.DurationVar(&c.assumeTTL, "assume-ttl", c.assumeTTL, "how long a pod let through counts on the nodes it passed before it is seen bound")
	fs.DurationVar(&c.recheckAfter, "recheck-after", c.recheckAfter, "how long after a node's free slices change the extender leaves the scheduler's own retry to come before it wakes the scheduler for a pod it refused there on an older state (label "+contract.NodeRecheckLabel+")")
	fs.StringVar(&c.logLevel, "log-level", c.logLevel, "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.assumeTTL <= 0:
		return c, fmt.Errorf("--assume-ttl %s must be positive", c.assumeTTL)
	case c.recheckAfter <= 0:
		return c, fmt.Errorf("--recheck-after %s must be positive", c.recheckAfter)
	case c.resource == "" || len(c.resource) > 253:
		return c, fmt.Errorf("--resource-name %q is not a resource name", c.resource)
	}
	if _, _, err := net.SplitHostPort(c.listen); err != nil {
		return c, fmt.Errorf("--listen-address: %w", err)
	}
	return c, nil
}

func run(args []string, stderr io.Writer) int {
	c, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "gpu-scheduler-extender:", err)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		fmt.Fprintln(stderr, "gpu-scheduler-extender: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, c, log); err != nil {
		log.Error("exiting", "err", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, c config, log *slog.Logger) error {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.kubeconfig
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("kubernetes config: %w", err)
	}
	rc.UserAgent = "gpu-scheduler-extender/" + version
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("listen on --listen-address: %w", err)
	}
	cl, caches, err := newCaches(cs)
	if err != nil {
		return err
	}
	ext := extender.New(cl, extender.Options{Resource: c.resource, AssumeTTL: c.assumeTTL, RecheckAfter: c.recheckAfter, Logger: log})
	synced, err := caches.start(ctx, ext.NodeChanged)
	if err != nil {
		return err
	}
	go wakeLoop(ctx, ext, cs, log)
	srv := &http.Server{
		Handler:           extender.Handler(ext, synced),
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("serving", "address", lis.Addr().String(), "resource", c.resource, "version", version)
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// cluster reads nodes and pods from informer caches.
type cluster struct {
	nodes  listersv1.NodeLister
	pods   listersv1.PodLister
	byNode cache.Indexer
}

const byNodeIndex = "spec.nodeName"

// caches are the node and pod informers behind a cluster.
type caches struct {
	factories []informers.SharedInformerFactory
	nodes     cache.SharedIndexInformer
	pods      cache.SharedIndexInformer
}

// newCaches makes the node and pod informers, not started; only pods not
// yet ended are cached.
func newCaches(cs kubernetes.Interface) (*cluster, *caches, error) {
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(nil))
	pf := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.AndSelectors(
			fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
			fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed)),
		).String()
	}))
	nodes := f.Core().V1().Nodes()
	pods := pf.Core().V1().Pods()
	if err := pods.Informer().AddIndexers(cache.Indexers{byNodeIndex: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}, nil
		}
		return nil, nil
	}}); err != nil {
		return nil, nil, err
	}
	cl := &cluster{nodes: nodes.Lister(), pods: pods.Lister(), byNode: pods.Informer().GetIndexer()}
	return cl, &caches{factories: []informers.SharedInformerFactory{f, pf}, nodes: nodes.Informer(), pods: pods.Informer()}, nil
}

// start tells changed of every change in the caches that can free room on
// a node (a node added, its free slices per GPU changed, a pod bound to it
// gone), starts the informers and returns whether they have synced.
func (c *caches) start(ctx context.Context, changed func(node string)) (func() bool, error) {
	if _, err := c.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok {
				changed(n.Name)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			if ok1 && ok2 && o.Annotations[contract.NodeSlicesAnnotation] != n.Annotations[contract.NodeSlicesAnnotation] {
				changed(n.Name)
			}
		},
	}); err != nil {
		return nil, err
	}
	if _, err := c.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
				changed(p.Spec.NodeName)
			}
		},
	}); err != nil {
		return nil, err
	}
	for _, f := range c.factories {
		f.Start(ctx.Done())
	}
	return func() bool { return c.nodes.HasSynced() && c.pods.HasSynced() }, nil
}

// wakeLoop asks the extender every second which nodes the scheduler must
// be woken for, and wakes it: a new value of the label
// contract.NodeRecheckLabel, a node label change, makes the scheduler try
// the pods it could not place again, now that the extender's cache holds
// what freed the room.
func wakeLoop(ctx context.Context, ext *extender.Extender, cs kubernetes.Interface, log *slog.Logger) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, node := range ext.Recheck() {
			patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, contract.NodeRecheckLabel, strconv.FormatInt(time.Now().UnixNano(), 10))
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := cs.CoreV1().Nodes().Patch(wctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "gpu-scheduler-extender"})
			cancel()
			if err != nil {
				log.Warn("could not wake the scheduler for a node where a pod it refused fits now; it tries the pod again on the next event, or within 5 minutes", "node", node, "err", err)
				continue
			}
			log.Info("woke the scheduler: a pod refused on an older state fits this node now", "node", node)
		}
	}
}

func (c *cluster) Node(name string) (*corev1.Node, bool) {
	n, err := c.nodes.Get(name)
	return n, err == nil
}

func (c *cluster) PodsOn(node string) []*corev1.Pod {
	objs, err := c.byNode.ByIndex(byNodeIndex, node)
	if err != nil {
		return nil
	}
	out := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok {
			out = append(out, p)
		}
	}
	return out
}

func (c *cluster) Pod(namespace, name string) (*corev1.Pod, bool) {
	p, err := c.pods.Pods(namespace).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, false
	}
	return p, err == nil
}
