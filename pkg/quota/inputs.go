package quota

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

func (c *Controller) evaluateNamespace(ctx context.Context, q gpuQuota, usage Usage, sizes DeviceSizes, metricsOK bool, now time.Time) error {
	ns, spec := q.obj.Namespace, q.obj.Spec
	in := Input{Spec: spec, MetricsOK: metricsOK, Now: now, ScrapeInterval: c.opts.ScrapeInterval, KueueServed: c.opts.KueueCheck}
	if spec.Admission == AdmissionKueue && c.opts.Queues != nil {
		in.UncoveredQueues, _ = c.opts.Queues.Uncovered(ns)
	}
	if rq, err := c.quotas.ResourceQuotas(ns).Get(QuotaName); err == nil {
		used := rq.Status.Used[corev1.ResourceName("requests."+c.opts.Resource)]
		in.UsedSlices = used.Value()
	}
	if spec.Budget != nil {
		key := BudgetKey(*spec.Budget)
		in.UsedGPUHours, in.HoursInvalid = usage.GPUHours[key][ns], usage.InvalidHours[key][ns]
	}
	claimSlices, err := c.claimUse(ns, sizes, &in)
	if err != nil {
		return err
	}
	podSlices, err := c.readPods(ns, usage, claimSlices, &in)
	if err != nil {
		return err
	}
	if in.UsedSlices == 0 {
		in.UsedSlices = podSlices // no ResourceQuota yet: count the pods
	}
	c.mu.Lock()
	if prev, ok := c.last[ns]; ok {
		in.Previous = &prev
	}
	c.mu.Unlock()
	d := Decide(in)
	r := nsReport{usedSlices: float64(in.UsedSlices), claimSlices: -1, usedHours: d.UsedGPUHours, idle: float64(len(d.Idle)), unknown: float64(len(d.Unknown)), exhausted: d.BudgetExhausted}
	if d.Hard != nil {
		v := float64(*d.Hard)
		r.limit = &v
	}
	if spec.Budget != nil {
		v := spec.Budget.GPUHours
		r.budget = &v
	}
	if in.Claims != nil {
		r.claimSlices = float64(in.Claims.Slices)
		r.claimLimits = d.ClaimDevices
		r.adminClaims = float64(in.Claims.AdminAccess)
	}
	c.mu.Lock()
	c.last[ns] = d
	c.next[ns] = r
	c.mu.Unlock()

	var errs []error
	errs = append(errs, c.applyQuota(ctx, q.obj, ns, d))
	// After the ResourceQuota: a Kueue workload admitted on room the
	// budget has again is not refused by a limit not raised yet.
	var room time.Duration
	if b := spec.Budget; b != nil && d.BudgetExhausted && metricsOK {
		room = RoomAfter(b.Window.Duration, b.GPUHours, usage.Room[BudgetKey(*b)][ns])
	}
	c.recordBudget(q, d, metricsOK, nil, room)
	for _, name := range d.Annotate {
		errs = append(errs, c.annotate(ctx, ns, name, now))
	}
	for _, name := range d.Evict {
		errs = append(errs, c.evict(ctx, ns, name, spec))
	}
	errs = append(errs, c.writeStatus(ctx, q, &in, d, now, nil))
	return errors.Join(errs...)
}

// readPods reads the namespace's pods holding slices or claims into
// in.Pods, and returns the nvidia.com/vgpu slices they request.
func (c *Controller) readPods(ns string, usage Usage, claimSlices map[string]int64, in *Input) (int64, error) {
	pods, err := c.pods.Pods(ns).List(labels.Everything())
	if err != nil {
		return 0, err
	}
	var podSlices int64
	for _, p := range pods {
		n := c.slices(p)
		vgpu := n
		for _, name := range podClaims(p) {
			n += claimSlices[name]
		}
		if n == 0 || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil {
			continue
		}
		podSlices += vgpu
		pp := Pod{Name: p.Name, Slices: n, Running: p.Status.Phase == corev1.PodRunning, OptOut: p.Annotations[AnnotationOptOut] == "true", IdleSince: p.Annotations[AnnotationIdleSince]}
		if p.Status.StartTime != nil {
			pp.Started = p.Status.StartTime.Time
		}
		if in.Spec.Idle != nil {
			ev := usage.Idle[in.Spec.Idle.For.Duration]
			pp.UseUnknown = ev.Unknown[ns+"/"+p.Name]
			if e, ok := ev.Pods[ns+"/"+p.Name]; ok {
				pp.Evidence = &e
				for _, inst := range e.Instances {
					pp.AgentBlind = pp.AgentBlind || ev.Blind[inst]
				}
			}
		}
		in.Pods = append(in.Pods, pp)
	}
	return podSlices, nil
}

// slices is what a pod requests of the resource, over its containers.
func (c *Controller) slices(p *corev1.Pod) int64 {
	var n int64
	for _, ctr := range p.Spec.Containers {
		if q, ok := ctr.Resources.Limits[corev1.ResourceName(c.opts.Resource)]; ok {
			n += q.Value()
		} else if q, ok := ctr.Resources.Requests[corev1.ResourceName(c.opts.Resource)]; ok {
			n += q.Value()
		}
	}
	return n
}

// deviceSizes reads the driver's published devices once per cycle; none
// without DeviceClasses.
func (c *Controller) deviceSizes() (DeviceSizes, error) {
	if c.rslices == nil {
		return DeviceSizes{}, nil
	}
	rs, err := c.rslices.List(labels.Everything())
	if err != nil {
		return DeviceSizes{}, fmt.Errorf("list ResourceSlices: %w", err)
	}
	return SizesFromSlices(rs), nil
}

// claimUse reads what the namespace's claims of the capped classes count
// for into in.Claims, and returns each claim's slices by name. Without
// DeviceClasses it reads nothing.
func (c *Controller) claimUse(ns string, sizes DeviceSizes, in *Input) (map[string]int64, error) {
	if c.claims == nil {
		return nil, nil
	}
	claims, err := c.claims.ResourceClaims(ns).List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list ResourceClaims of %s: %w", ns, err)
	}
	use := &ClaimUse{Classes: c.opts.DeviceClasses, Devices: map[string]int64{}, PerDevice: sizes.PerDevice, Uncapped: map[string]int64{}}
	bySlices := map[string]int64{}
	for _, cl := range claims {
		cc := CountClaim(cl, Classes{Capped: c.opts.DeviceClasses, Mapped: c.opts.MappedClasses}, sizes)
		if !cc.Ours {
			continue
		}
		if cc.Uncapped != "" {
			// Fail closed: the class is held at what its claims hold
			// (a ResourceQuota limit and a condition), never unlimited.
			c.log.Warn("a claim holds gpuslice devices through a device class the controller does not cap; it is closed at what it holds: add it to --dra-device-classes (or to --dra-extended-resource-classes if it maps the extended resource)",
				"namespace", ns, "claim", cl.Name, "deviceClass", cc.Uncapped)
			held := CountClaim(cl, Classes{Capped: []string{cc.Uncapped}}, sizes)
			use.Uncapped[cc.Uncapped] += max(held.Devices[cc.Uncapped], 1)
		}
		if cc.AdminAccess {
			use.AdminAccess++
		}
		for class, n := range cc.Devices {
			use.Devices[class] += n
		}
		use.Slices += cc.Slices
		bySlices[cl.Name] = cc.Slices
	}
	// A device the API server admitted before this cache saw its claim
	// must not leave room for one more: count from the smaller number.
	if rq, err := c.quotas.ResourceQuotas(ns).Get(QuotaName); err == nil {
		for _, class := range c.opts.DeviceClasses {
			if used, ok := rq.Status.Used[corev1.ResourceName(DeviceClassQuotaKey(class))]; ok && used.Value() < use.Devices[class] {
				use.Devices[class] = used.Value()
			}
		}
	}
	in.Claims = use
	return bySlices, nil
}

// podClaims names the ResourceClaims a pod uses: those it names, and those
// made for it from templates, as its status records them.
func podClaims(p *corev1.Pod) []string {
	var out []string
	for _, rc := range p.Spec.ResourceClaims {
		if rc.ResourceClaimName != nil {
			out = append(out, *rc.ResourceClaimName)
			continue
		}
		for _, st := range p.Status.ResourceClaimStatuses {
			if st.Name == rc.Name && st.ResourceClaimName != nil {
				out = append(out, *st.ResourceClaimName)
			}
		}
	}
	return out
}
