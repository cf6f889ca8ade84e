package kueuecheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/quota"
)

// Kueue's resources this controller reads and writes (its v1beta2 API).
var (
	AdmissionChecks = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "admissionchecks"}
	Workloads       = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "workloads"}
	LocalQueues     = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "localqueues"}
	ClusterQueues   = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "clusterqueues"}
	// Nodes: how many slices each GPU is cut into, for a workload's cost.
	Nodes = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}
)

// FieldManager owns the check's entries in Workloads' status and the
// AdmissionChecks' Active condition.
const FieldManager = "gpuslice-kueue-check"

// Budgets is the quota controller's view of each namespace's budget.
type Budgets interface {
	BudgetOf(namespace string) quota.BudgetState
}

// BudgetsFunc is a function as Budgets.
type BudgetsFunc func(namespace string) quota.BudgetState

// BudgetOf calls f.
func (f BudgetsFunc) BudgetOf(namespace string) quota.BudgetState { return f(namespace) }

// Options configure a Controller.
type Options struct {
	// ControllerName is the AdmissionCheck controllerName served;
	// DefaultControllerName when empty.
	ControllerName string
	// Interval is how often every pending check is judged again.
	Interval time.Duration
	// Resource is the extended resource of slices; contract.ResourceName
	// when empty.
	Resource string
	Logger   *slog.Logger
}

// Controller keeps the AdmissionChecks naming ControllerName active and
// writes, into every Workload not yet admitted that waits on one of them,
// the check's state as Judge decides it from Budgets.
type Controller struct {
	dyn     dynamic.Interface
	budgets Budgets
	opts    Options
	log     *slog.Logger
	checks  cache.GenericLister
	wls     cache.GenericLister
	lqs     cache.GenericLister
	cqs     cache.GenericLister
	nodes   cache.GenericLister
	synced  []cache.InformerSynced
	factory dynamicinformer.DynamicSharedInformerFactory
}

// New builds a Controller; Run starts it.
func New(dyn dynamic.Interface, budgets Budgets, opts Options) *Controller {
	if opts.ControllerName == "" {
		opts.ControllerName = DefaultControllerName
	}
	if opts.Interval <= 0 {
		opts.Interval = quota.DefaultInterval
	}
	if opts.Resource == "" {
		opts.Resource = contract.ResourceName
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	f := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	ac, wl, lq, cq, nodes := f.ForResource(AdmissionChecks), f.ForResource(Workloads), f.ForResource(LocalQueues), f.ForResource(ClusterQueues), f.ForResource(Nodes)
	return &Controller{dyn: dyn, budgets: budgets, opts: opts, log: opts.Logger, factory: f,
		checks: ac.Lister(), wls: wl.Lister(), lqs: lq.Lister(), cqs: cq.Lister(), nodes: nodes.Lister(),
		synced: []cache.InformerSynced{ac.Informer().HasSynced, wl.Informer().HasSynced, lq.Informer().HasSynced, cq.Informer().HasSynced, nodes.Informer().HasSynced}}
}

// SyncTimeout bounds how long Run waits for its caches: Kueue's CRDs
// missing is a misconfiguration to fail on, not to wait out silently.
const SyncTimeout = time.Minute

// Run syncs every Interval until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.factory.Start(ctx.Done())
	sctx, cancel := context.WithTimeout(ctx, SyncTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(sctx.Done(), c.synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("admission checks and workloads of Kueue not listed within %s: are Kueue's CRDs (v1beta2) installed, and may the controller read them?", SyncTimeout)
	}
	t := time.NewTicker(c.opts.Interval)
	defer t.Stop()
	for {
		if err := c.Sync(ctx, time.Now()); err != nil && ctx.Err() == nil {
			c.log.Error("kueue admission check", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sync requeues the Workloads it reclaimed once Kueue has evicted them,
// marks this controller's AdmissionChecks active and judges every pending
// check of theirs.
func (c *Controller) Sync(ctx context.Context, now time.Time) error {
	objs, err := c.wls.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list Workloads: %w", err)
	}
	names, errs := c.activate(ctx, now)
	// Read from every node's annotation, and only when a check is judged.
	share := sync.OnceValue(c.sliceShare)
	for _, o := range objs {
		w, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		if err := c.requeue(ctx, w); err != nil {
			errs = append(errs, err)
		}
		if len(names) > 0 && !conditionTrue(w, "Admitted") && !conditionTrue(w, "Finished") { // admitted work is never stopped by the check
			errs = append(errs, c.judge(ctx, w, names, share, now)...)
		}
	}
	return errors.Join(errs...)
}

// judge writes the state of each of this controller's checks a Workload
// waits on, where it changed.
func (c *Controller) judge(ctx context.Context, w *unstructured.Unstructured, names map[string]bool, share func() float64, now time.Time) []error {
	var errs []error
	entries, _, _ := unstructured.NestedSlice(w.Object, "status", "admissionChecks")
	for _, e := range entries {
		entry, _ := e.(map[string]any)
		name, _ := entry["name"].(string)
		if !names[name] {
			continue
		}
		cost := costOf(w, c.opts.Resource, 0)
		if cost.MaxExecution > 0 {
			cost.SliceShare = share()
		}
		v := Judge(c.budgets.BudgetOf(w.GetNamespace()), cost)
		if entry["state"] == v.State && entry["message"] == v.Message {
			continue
		}
		if err := c.apply(ctx, w, name, entry, v, now); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// activate returns the names of the AdmissionChecks this controller
// serves, setting their Active condition where it is not true.
func (c *Controller) activate(ctx context.Context, now time.Time) (map[string]bool, []error) {
	served, err := c.served()
	if err != nil {
		return nil, []error{err}
	}
	names := map[string]bool{}
	var errs []error
	for _, ac := range served {
		names[ac.GetName()] = true
		if conditionTrue(ac, "Active") {
			continue
		}
		patch := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "AdmissionCheck",
			"metadata": map[string]any{"name": ac.GetName()},
			"status": map[string]any{"conditions": []any{map[string]any{
				"type": "Active", "status": "True", "reason": "Active", "observedGeneration": ac.GetGeneration(),
				"message": "gpuslice judges GPU-hour budgets of GPUQuotas", "lastTransitionTime": now.UTC().Format(time.RFC3339),
			}}},
		}}
		if _, err := c.dyn.Resource(AdmissionChecks).Apply(ctx, ac.GetName(), patch, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}, "status"); err != nil {
			errs = append(errs, fmt.Errorf("activate AdmissionCheck %s: %w", ac.GetName(), err))
			continue
		}
		c.log.Info("admission check active", "admission_check", ac.GetName(), "controller_name", c.opts.ControllerName)
	}
	return names, errs
}

// apply writes the check's entry of a Workload's status.
func (c *Controller) apply(ctx context.Context, w *unstructured.Unstructured, check string, entry map[string]any, v Verdict, now time.Time) error {
	since, _ := entry["lastTransitionTime"].(string)
	if entry["state"] != v.State || since == "" {
		since = now.UTC().Format(time.RFC3339)
	}
	patch := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
		"metadata": map[string]any{"name": w.GetName(), "namespace": w.GetNamespace()},
		"status": map[string]any{"admissionChecks": []any{map[string]any{
			"name": check, "state": v.State, "message": v.Message, "lastTransitionTime": since,
		}}},
	}}
	if _, err := c.dyn.Resource(Workloads).Namespace(w.GetNamespace()).Apply(ctx, w.GetName(), patch, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}, "status"); err != nil {
		return fmt.Errorf("workload %s/%s: check %s: %w", w.GetNamespace(), w.GetName(), check, err)
	}
	c.log.Info("admission check", "namespace", w.GetNamespace(), "workload", w.GetName(), "admission_check", check, "state", v.State, "message", v.Message)
	return nil
}

// conditionTrue reports whether an object's status condition is "True".
func conditionTrue(obj *unstructured.Unstructured, kind string) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == kind {
			return m["status"] == "True"
		}
	}
	return false
}
