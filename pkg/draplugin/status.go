package draplugin

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	resourceapply "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
)

// statusTimeout bounds one claim status write: an API server that hangs
// must not pile up writers.
const statusTimeout = 10 * time.Second

// enforcementPoll is how often the agent's enforcement file is looked at.
const enforcementPoll = 2 * time.Second

// statusWriter writes each prepared claim's share into its status
// (status.devices: the share's limits as data, the Prepared condition and,
// from gpu-agent's enforcement file, the Enforced condition) by
// server-side apply under the driver's field manager, apart from Prepare,
// which it never delays or fails: the status is for people and tools
// reading the claim; the node holds the share either way. A write that
// fails is logged and made again when the claim's enforcement next
// changes, or at its next Prepare.
type statusWriter struct {
	client kubernetes.Interface
	pool   string
	log    *slog.Logger
	prep   *dra.Preparer
	// enforcement reads gpu-agent's word on each claim; nil without one.
	enforcement *kubeletstate.CachedFile[contract.ClaimEnforcement]
	// inFlight bounds concurrent writes; past it a write waits.
	inFlight chan struct{}

	mu sync.Mutex
	// claims are the prepared claims whose status is written, by UID.
	claims map[types.UID]*claimStatus
	// word is gpu-agent's latest word, by "namespace/name"; unreadable
	// says why its file could not be read, "" when it could.
	word       map[string]contract.ClaimEnforced
	unreadable string
}

// claimStatus is one claim's status as last written.
type claimStatus struct {
	claim    *resourceapi.ResourceClaim
	grants   []dra.Grant
	prepared metav1.Time
	enforced dra.Condition
}

func newStatusWriter(client kubernetes.Interface, pool string, prep *dra.Preparer, enforcementFile string, log *slog.Logger) *statusWriter {
	w := &statusWriter{client: client, pool: pool, log: log, prep: prep, inFlight: make(chan struct{}, 8),
		claims: map[types.UID]*claimStatus{}, word: map[string]contract.ClaimEnforced{}}
	if enforcementFile != "" {
		w.enforcement = kubeletstate.NewCachedFile(enforcementFile, "gpu-agent's claim enforcement", contract.ParseClaimEnforcement)
	}
	return w
}

// prepared writes a claim's status now that it is prepared.
func (w *statusWriter) prepared(ctx context.Context, claim *resourceapi.ResourceClaim, grants []dra.Grant) {
	if w.client == nil {
		return
	}
	w.mu.Lock()
	cs := &claimStatus{claim: claim, grants: grants, prepared: metav1.Now()}
	w.claims[claim.UID] = cs
	cs.enforced = w.enforcedLocked(cs, cs.prepared)
	apply := w.applyLocked(cs)
	w.mu.Unlock()
	w.write(ctx, claim, apply)
}

// unprepared forgets a claim.
func (w *statusWriter) unprepared(uid types.UID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.claims, uid)
}

// enforcedLocked is the claim's Enforced condition from the agent's
// latest word, keeping its transition time while its status holds.
func (w *statusWriter) enforcedLocked(cs *claimStatus, now metav1.Time) dra.Condition {
	e, known := w.word[cs.claim.Namespace+"/"+cs.claim.Name]
	c := dra.EnforcedCondition(e, known && w.enforcement != nil)
	if w.unreadable != "" {
		c.Reason, c.Message = "ReportUnreadable", "gpu-agent's report cannot be read: "+w.unreadable
	}
	c.Since = now
	if cs.enforced.Status == c.Status {
		c.Since = cs.enforced.Since
	}
	return c
}

// applyLocked is the claim's status to apply.
func (w *statusWriter) applyLocked(cs *claimStatus) *resourceapply.ResourceClaimApplyConfiguration {
	conditions := []dra.Condition{dra.PreparedCondition(cs.prepared)}
	if w.enforcement != nil {
		conditions = append(conditions, cs.enforced)
	}
	devices := dra.DeviceStatuses(cs.claim, w.pool, cs.grants, conditions...)
	if len(devices) == 0 {
		return nil
	}
	return resourceapply.ResourceClaim(cs.claim.Name, cs.claim.Namespace).WithUID(cs.claim.UID).
		WithStatus(resourceapply.ResourceClaimStatus().WithDevices(devices...))
}

// write applies a claim's status in the background.
func (w *statusWriter) write(ctx context.Context, claim *resourceapi.ResourceClaim, apply *resourceapply.ResourceClaimApplyConfiguration) {
	if apply == nil {
		return
	}
	go func() {
		select {
		case w.inFlight <- struct{}{}:
		case <-ctx.Done():
			return
		}
		defer func() { <-w.inFlight }()
		ctx, cancel := context.WithTimeout(ctx, statusTimeout)
		defer cancel()
		if _, err := w.client.ResourceV1().ResourceClaims(claim.Namespace).ApplyStatus(ctx, apply, metav1.ApplyOptions{FieldManager: dra.DriverName, Force: true}); err != nil {
			w.log.Warn("claim status not written: the claim does not show its share", "namespace", claim.Namespace, "claim", claim.Name, "err", err)
		}
	}()
}

// run follows gpu-agent's enforcement file until ctx ends, writing the
// status of each claim whose Enforced condition changed. Claims prepared
// before this driver started are read from the API server once, so that
// their status follows too.
func (w *statusWriter) run(ctx context.Context) {
	if w.client == nil || w.enforcement == nil {
		return
	}
	defer w.enforcement.Close()
	t := time.NewTicker(enforcementPoll)
	defer t.Stop()
	for {
		w.adoptPrepared(ctx)
		w.follow(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// follow reads the agent's word and writes what changed.
func (w *statusWriter) follow(ctx context.Context) {
	word, err := w.enforcement.Read()
	unreadable := ""
	switch {
	case errors.Is(err, fs.ErrNotExist):
		word.Claims = map[string]contract.ClaimEnforced{}
	case err != nil:
		// Never a stale True: every claim says it cannot be told.
		w.log.Warn("gpu-agent's claim enforcement unreadable: claims' Enforced condition is Unknown", "err", err)
		word.Claims, unreadable = map[string]contract.ClaimEnforced{}, err.Error()
	}
	now := metav1.Now()
	w.mu.Lock()
	w.word, w.unreadable = word.Claims, unreadable
	var writes []*claimStatus
	for _, cs := range w.claims {
		c := w.enforcedLocked(cs, now)
		if c != cs.enforced {
			cs.enforced = c
			writes = append(writes, cs)
		}
	}
	applies := make([]*resourceapply.ResourceClaimApplyConfiguration, len(writes))
	for i, cs := range writes {
		applies[i] = w.applyLocked(cs)
	}
	w.mu.Unlock()
	for i, cs := range writes {
		w.write(ctx, cs.claim, applies[i])
	}
}

// adoptPrepared reads from the API server the claims prepared before this
// driver started, so their status is written too.
func (w *statusWriter) adoptPrepared(ctx context.Context) {
	for uid, p := range w.prep.Claims() {
		w.mu.Lock()
		_, known := w.claims[uid]
		w.mu.Unlock()
		if known {
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, statusTimeout)
		claim, err := w.client.ResourceV1().ResourceClaims(p.Namespace).Get(gctx, p.Name, metav1.GetOptions{})
		cancel()
		if err != nil || claim.UID != uid {
			continue // gone, or not readable now: tried again next time
		}
		w.prepared(ctx, claim, p.Grants)
	}
}
