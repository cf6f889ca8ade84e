package draplugin

import (
	"context"
	"log/slog"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	resourceapply "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/gpuslice/gpuslice/pkg/dra"
)

// statusTimeout bounds one claim status write: an API server that hangs
// must not pile up writers.
const statusTimeout = 10 * time.Second

// statusWriter writes each prepared claim's share into its status
// (status.devices: the share's limits as data, and the Prepared
// condition) by server-side apply under the driver's field manager, apart
// from Prepare, which it never delays or fails: the status is for people
// and tools reading the claim; the node holds the share either way. A
// write that fails is logged, and written again at the claim's next
// Prepare (a kubelet restart prepares it again).
type statusWriter struct {
	ctx    context.Context
	client kubernetes.Interface
	pool   string
	log    *slog.Logger
	// inFlight bounds concurrent writes; past it a write waits.
	inFlight chan struct{}
	wg       sync.WaitGroup
}

func newStatusWriter(ctx context.Context, client kubernetes.Interface, pool string, log *slog.Logger) *statusWriter {
	return &statusWriter{ctx: ctx, client: client, pool: pool, log: log, inFlight: make(chan struct{}, 8)}
}

// write applies the claim's device statuses in the background.
func (w *statusWriter) write(claim *resourceapi.ResourceClaim, grants []dra.Grant) {
	if w.client == nil {
		return
	}
	devices := dra.DeviceStatuses(claim, w.pool, grants, metav1.Now())
	if len(devices) == 0 {
		return
	}
	apply := resourceapply.ResourceClaim(claim.Name, claim.Namespace).WithUID(claim.UID).
		WithStatus(resourceapply.ResourceClaimStatus().WithDevices(devices...))
	w.wg.Go(func() {
		select {
		case w.inFlight <- struct{}{}:
		case <-w.ctx.Done():
			return
		}
		defer func() { <-w.inFlight }()
		ctx, cancel := context.WithTimeout(w.ctx, statusTimeout)
		defer cancel()
		if _, err := w.client.ResourceV1().ResourceClaims(claim.Namespace).ApplyStatus(ctx, apply, metav1.ApplyOptions{FieldManager: dra.DriverName, Force: true}); err != nil {
			w.log.Warn("claim status not written: the claim does not show its share", "namespace", claim.Namespace, "claim", claim.Name, "err", err)
		}
	})
}
