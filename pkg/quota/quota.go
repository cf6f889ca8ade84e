// Package quota decides, from measured GPU use, what gpuslice's quota
// controller does to a namespace: the hard limit of the ResourceQuota it
// owns on requests.nvidia.com/vgpu (lowered to what is in use while a
// GPU-hour budget is exhausted, so new GPU pods are rejected at admission
// and running ones are left alone), and which pods holding slices they do
// not use it annotates or evicts. Everything here is pure: the controller
// gathers the inputs and carries the decisions out.
package quota

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/gpuslice/gpuslice/api/v1alpha1"
)

// Budget sources and idle actions, as the API defines them.
const (
	SourceBusy      = v1alpha1.SourceBusy
	SourceAllocated = v1alpha1.SourceAllocated
	ActionNone      = v1alpha1.ActionNone
	ActionAnnotate  = v1alpha1.ActionAnnotate
	ActionEvict     = v1alpha1.ActionEvict
	// AdmissionKueue: Kueue's AdmissionCheck, not a ResourceQuota, holds
	// the namespace's new work back.
	AdmissionKueue = v1alpha1.AdmissionKueue
)

// Annotations on pods.
const (
	// AnnotationIdleSince marks a pod found idle, with when it went idle.
	AnnotationIdleSince = "gpuslice.io/idle-since"
	// AnnotationOptOut, "true" on a pod, exempts it from idle reclaim
	// where the quota allows opting out.
	AnnotationOptOut = "gpuslice.io/idle-reclaim-opt-out"
)

// Condition types.
const (
	ConditionBudgetExhausted    = "BudgetExhausted"
	ConditionMetricsUnavailable = "MetricsUnavailable"
	// ConditionIdlenessUnknown is true while some pod old enough to judge
	// lacks the evidence idleness needs.
	ConditionIdlenessUnknown = "IdlenessUnknown"
	// ConditionClaimsLimited is true while the controller's ResourceQuota
	// limits the namespace's DRA claim devices; its message says why.
	ConditionClaimsLimited = "ClaimsLimited"
	// ConditionUncappedDeviceClass is true while claims in the namespace
	// reach gpuslice's devices through a device class the controller was
	// not told to cap: that class is closed at what its claims hold.
	ConditionUncappedDeviceClass = "UncappedDeviceClass"
	// ConditionBudgetNotEnforced is true while a GPUQuota with admission
	// Kueue has a budget that nothing holds to: the controller serves no
	// Kueue AdmissionCheck.
	ConditionBudgetNotEnforced = "BudgetNotEnforced"
)

// The GPUQuota spec's parts, as the API (api/v1alpha1) defines them.
type (
	// Spec is a GPUQuota's spec.
	Spec = v1alpha1.GPUQuotaSpec
	// Budget is a GPU-hour budget over a rolling window.
	Budget = v1alpha1.Budget
	// Idle is the idle-reclaim policy.
	Idle = v1alpha1.Idle
	// Duration is a time.Duration written as "24h" in JSON.
	Duration = v1alpha1.Duration
)

// Pod is a pod of the namespace holding slices, with what the metrics say.
type Pod struct {
	Name string
	// Slices it requests.
	Slices int64
	// Running is true once its containers started; Started is when.
	Running bool
	Started time.Time
	// Evidence is what Prometheus holds of its use over the idle window;
	// nil when it has no series for it.
	Evidence *PodEvidence
	// AgentBlind is true when an agent reporting it was down, or could not
	// read a GPU, at some point in the window.
	AgentBlind bool
	// UseUnknown is true when an agent marked its use unknown at some
	// point in the window (a process of it could not be placed in one of
	// its containers): its series are incomplete.
	UseUnknown bool
	// OptOut is its opt-out annotation; IdleSince its idle mark.
	OptOut    bool
	IdleSince string
}

// Input is what the controller knows about one namespace at one moment.
type Input struct {
	Spec Spec
	// UsedSlices is what its pods hold now (the ResourceQuota's used).
	UsedSlices int64
	// UsedGPUHours is its use over the budget window; valid only with
	// MetricsOK and not HoursInvalid.
	UsedGPUHours float64
	// HoursInvalid is true when its GPU-hours came out NaN, infinite or
	// negative: the budget keeps its previous state.
	HoursInvalid bool
	// MetricsOK is false when Prometheus could not be read this cycle.
	MetricsOK bool
	// ScrapeInterval is how often Prometheus scrapes the agents: an idle
	// window of d needs about d/ScrapeInterval samples of a pod.
	ScrapeInterval time.Duration
	Pods           []Pod
	Now            time.Time
	// Previous is the last decision, kept while metrics are unavailable.
	Previous *Decision
	// Claims is what the namespace's DRA claims count for; nil when the
	// controller caps no device class.
	Claims *ClaimUse
	// KueueServed is true when the controller serves a Kueue
	// AdmissionCheck (--kueue-admission-check).
	KueueServed bool
	// UncoveredQueues names the namespace's Kueue LocalQueues whose
	// ClusterQueue lists no check the controller serves (admission Kueue).
	UncoveredQueues []string
}

// Decision is what to do to the namespace.
type Decision struct {
	// Hard is the ResourceQuota's hard limit on requests.nvidia.com/vgpu;
	// nil: the namespace needs no ResourceQuota.
	Hard *int64
	// BudgetExhausted is true while the budget is spent.
	BudgetExhausted bool
	// UsedGPUHours is reported in status (the last known when metrics are
	// unavailable).
	UsedGPUHours float64
	// Idle lists pods found idle; Annotate and Evict those to act on.
	Idle, Annotate, Evict []string
	// Unknown lists, as "pod: why", pods old enough to judge whose
	// idleness the evidence cannot show: never acted on.
	Unknown []string
	// Reason explains Hard, for an Event when it changes.
	Reason string
	// ClaimDevices is, by device class, the ResourceQuota's hard limit on
	// claim devices; nil: claims are not capped.
	ClaimDevices map[string]int64
	// ClaimReason explains ClaimDevices.
	ClaimReason string
	// Measured is true when UsedGPUHours and BudgetExhausted come from a
	// measurement, this cycle's or the last one kept: false while
	// Prometheus has never been read for the namespace, or its GPU-hours
	// were never valid. Unknown use is never room in the budget.
	Measured bool
}

// Decide decides for one namespace. Without metrics it keeps the previous
// decision's limit and budget state and never evicts or annotates: missing
// data is not evidence of idleness.
func Decide(in Input) Decision {
	d := decide(in)
	// Claim caps need no measurement: only the budget state, decided above.
	d.ClaimDevices, d.ClaimReason = claimLimits(in.Spec, in.Claims, d.BudgetExhausted)
	return d
}

func decide(in Input) Decision {
	var d Decision
	if !in.MetricsOK {
		if in.Previous != nil {
			d.Hard, d.BudgetExhausted, d.UsedGPUHours, d.Reason = in.Previous.Hard, in.Previous.BudgetExhausted, in.Previous.UsedGPUHours, in.Previous.Reason
			d.Measured = in.Previous.Measured
			return d
		}
		// Nothing known: the cap alone, which needs no measurement.
		d.Hard = in.Spec.MaxSlices
		d.Reason = "metrics unavailable; only maxSlices applies"
		return d
	}
	d.UsedGPUHours = in.UsedGPUHours
	d.Hard = in.Spec.MaxSlices
	d.Reason = "maxSlices"
	d.Measured = in.Spec.Budget != nil
	switch b := in.Spec.Budget; {
	case b != nil && in.HoursInvalid:
		// Not a number to decide on: the budget stays as it was.
		d.UsedGPUHours, d.Hard, d.Reason, d.Measured = 0, in.Spec.MaxSlices, "GPU-hours unknown (invalid samples); maxSlices only", false
		if in.Previous != nil {
			d.Hard, d.BudgetExhausted, d.UsedGPUHours, d.Reason = in.Previous.Hard, in.Previous.BudgetExhausted, in.Previous.UsedGPUHours, in.Previous.Reason
			d.Measured = in.Previous.Measured
		}
	case b != nil && in.UsedGPUHours >= b.GPUHours:
		d.BudgetExhausted = true
		// No new GPU pods; running ones keep what they hold.
		hard := in.UsedSlices
		if d.Hard != nil && *d.Hard < hard {
			hard = *d.Hard
		}
		d.Hard = &hard
		d.Reason = fmt.Sprintf("GPU-hour budget exhausted: %.2f of %.2f used over %s", in.UsedGPUHours, b.GPUHours, b.Window)
		if in.Spec.Admission == AdmissionKueue {
			// Kueue's check holds new Workloads back; the ResourceQuota at
			// what is held stops work that does not come through Kueue.
			d.Reason += "; new Workloads wait in Kueue, and the ResourceQuota stops pods that bypass it"
		}
	}
	if i := in.Spec.Idle; i != nil {
		for _, p := range in.Pods {
			isIdle, unknown := idle(p, *i, in.Now, in.ScrapeInterval)
			if unknown != "" {
				d.Unknown = append(d.Unknown, p.Name+": "+unknown)
			}
			if !isIdle {
				continue
			}
			d.Idle = append(d.Idle, p.Name)
			if p.OptOut && i.AllowOptOut {
				continue
			}
			switch i.Action {
			case ActionAnnotate:
				if p.IdleSince == "" {
					d.Annotate = append(d.Annotate, p.Name)
				}
			case ActionEvict:
				d.Evict = append(d.Evict, p.Name)
			}
		}
		sort.Strings(d.Idle)
		sort.Strings(d.Unknown)
		sort.Strings(d.Annotate)
		sort.Strings(d.Evict)
	}
	return d
}

// MinCoverage is the share of the samples an idle window should hold
// (window / scrape interval) that a pod's every series must have.
const MinCoverage = 0.9

// idle decides from positive evidence only: a pod is idle when it has run
// for the whole window and Prometheus holds, for every one of its series,
// samples covering the window (MinCoverage of the expected count), every
// one a finite number in [0, 1] and below the threshold, from agents that
// were up and could read their GPUs throughout. A pod old enough to judge
// that lacks any of this is unknown, with the reason; never idle.
func idle(p Pod, i Idle, now time.Time, scrape time.Duration) (bool, string) {
	if !p.Running || p.Slices <= 0 || now.Sub(p.Started) < i.For.Duration {
		return false, ""
	}
	e := p.Evidence
	need := 2
	if scrape > 0 {
		need = max(need, int(math.Ceil(MinCoverage*float64(i.For.Duration)/float64(scrape))))
	}
	switch {
	case p.UseUnknown:
		return false, "an agent could not tell its use during the window: a process of it could not be placed in one of its containers"
	case e == nil:
		return false, "no samples of its GPU use in Prometheus over the window"
	case !e.Valid:
		return false, "a sample of its GPU use was not a number in [0, 1]"
	case p.AgentBlind:
		return false, "an agent reporting it was down or could not read a GPU during the window"
	case e.Samples < need:
		return false, fmt.Sprintf("only %d of the %d samples the window needs", e.Samples, need)
	}
	return e.Max < i.BelowUtilization, ""
}
