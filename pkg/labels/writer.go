package labels

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/pkg/kube"
)

// FieldManager names the agent in the node's managed fields, as the owner
// of its own labels (gpuslice.io/); FieldManagerGFD as the owner of the
// GFD-compatible ones it writes. Two managers, so that an agent that stops
// writing GFD's labels (GFD took over) applies nothing that would make the
// API server drop them.
const (
	FieldManager    = "gpuslice-agent"
	FieldManagerGFD = "gpuslice-agent-gfd"
)

// NodeAPI is what the writer needs of the API server; *kube.Client has it.
type NodeAPI interface {
	Node(ctx context.Context, name string) (kube.Meta, error)
	ApplyNodeLabels(ctx context.Context, name string, labels map[string]string, fieldManager string, force bool) error
	PatchNode(ctx context.Context, name string, patch any, fieldManager string) error
}

var _ NodeAPI = (*kube.Client)(nil)

// Writer keeps one node's labels at a desired set, touching no other node
// and no label the agent does not own.
type Writer struct {
	client   NodeAPI
	node     string
	gfd      bool
	log      *slog.Logger
	attempts int
	backoff  time.Duration
	resync   time.Duration   // Keep's period
	yielded  map[string]bool // labels left to another manager, logged once
	retry    time.Duration   // Keep's first wait after a failure
}

// How often Keep checks and repairs the labels, and its first wait after a
// failure, which doubles up to Resync.
const (
	Resync = 5 * time.Minute
	Retry  = 5 * time.Second
)

// NewWriter returns a writer for node. gfd says whether the agent owns the
// GFD-compatible labels (Options.GFD).
func NewWriter(client NodeAPI, node string, gfd bool, log *slog.Logger) *Writer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Writer{client: client, node: node, gfd: gfd, log: log, attempts: 5, backoff: 200 * time.Millisecond, resync: Resync, retry: Retry, yielded: map[string]bool{}}
}

// Keep keeps the node's labels at desired until ctx ends: at once, then
// every Resync, so a label someone removes comes back. A failure (the Node
// not registered yet, the API server away) is logged and retried after
// Retry, doubling up to Resync: labels never stop the device plugin.
func (w *Writer) Keep(ctx context.Context, desired map[string]string) {
	w.Follow(ctx, func() map[string]string { return desired }, nil)
}

// Follow is Keep with labels that change: desired is asked anew at each
// sync, and a value on changed syncs at once (a MIG layout changed).
func (w *Writer) Follow(ctx context.Context, desired func() map[string]string, changed <-chan struct{}) {
	retry := w.retry
	for {
		wait := w.resync
		if _, err := w.Sync(ctx, desired()); err != nil && ctx.Err() == nil {
			w.log.Error("node labels not applied", "err", err, "retry_in", retry)
			wait, retry = retry, min(2*retry, w.resync)
		} else {
			retry = w.retry
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-changed:
		}
	}
}

// Sync reads the node's labels and patches the difference: new and changed
// labels set, stale owned labels removed. It retries failures that may
// pass (conflicts, timeouts, server errors) with backoff, and returns how
// many labels changed.
func (w *Writer) Sync(ctx context.Context, desired map[string]string) (int, error) {
	var last error
	delay := w.backoff
	for attempt := range w.attempts {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(delay):
			}
			delay *= 2
		}
		n, err := w.sync(ctx, desired)
		if err == nil {
			return n, nil
		}
		last = err
		if !kube.Retriable(err) {
			break
		}
		w.log.Warn("node label sync failed; retrying", "node", w.node, "attempt", attempt+1, "err", err)
	}
	return 0, fmt.Errorf("label node %s: %w", w.node, last)
}

func (w *Writer) sync(ctx context.Context, desired map[string]string) (int, error) {
	node, err := w.client.Node(ctx, w.node)
	if err != nil {
		return 0, err
	}
	current, owners := node.Labels, node.LabelOwners()
	desired = w.notOthers(desired, owners)
	patch := Patch(current, desired, w.gfd)
	for k, v := range patch {
		// A stale label is removed only where the agents alone set it:
		// one GFD or NFD also set is theirs to keep.
		if v == nil && !strings.HasPrefix(k, OwnPrefix) && !Ours(owners[k]) {
			delete(patch, k)
		}
	}
	if len(patch) == 0 {
		return 0, nil
	}
	// The desired set by server-side apply, so the node's managedFields
	// say which labels are the agent's; stale owned labels by a merge
	// patch, since those an older agent wrote by update are not the
	// apply's to drop.
	stale := map[string]any{}
	for k, v := range patch {
		if v == nil {
			stale[k] = nil
		}
	}
	if len(stale) < len(patch) {
		own, gfd := map[string]string{}, map[string]string{}
		for k, v := range desired {
			if strings.HasPrefix(k, OwnPrefix) {
				own[k] = v
			} else {
				gfd[k] = v
			}
		}
		if err := w.client.ApplyNodeLabels(ctx, w.node, own, FieldManager, true); err != nil {
			return 0, err
		}
		if w.gfd {
			// Never forced: a key GFD or NFD took meanwhile is a
			// conflict, retried after it is left out.
			if err := w.client.ApplyNodeLabels(ctx, w.node, gfd, FieldManagerGFD, false); err != nil {
				return 0, err
			}
		}
	}
	if len(stale) > 0 {
		if err := w.client.PatchNode(ctx, w.node, map[string]any{"metadata": map[string]any{"labels": stale}}, FieldManager); err != nil {
			return 0, err
		}
	}
	w.log.Info("node labels updated", "node", w.node, "changed", len(patch))
	return len(patch), nil
}

// notOthers leaves out of desired the GFD-compatible labels another field
// manager (GPU Feature Discovery, NFD) set: the agent never fights them for
// a key. Its own gpuslice.io labels are always kept.
func (w *Writer) notOthers(desired map[string]string, owners map[string][]string) map[string]string {
	out := make(map[string]string, len(desired))
	for k, v := range desired {
		if !strings.HasPrefix(k, OwnPrefix) && len(owners[k]) > 0 && !Ours(owners[k]) {
			if !w.yielded[k] {
				w.log.Info("node label set by another manager; the agent leaves it to them", "node", w.node, "label", k, "managers", strings.Join(owners[k], ","))
				w.yielded[k] = true
			}
			continue
		}
		out[k] = v
	}
	return out
}

// Ours reports whether the field managers that set a label are the
// agents' alone (none at all is not ours: someone set it by hand or
// before managed fields).
func Ours(managers []string) bool {
	if len(managers) == 0 {
		return false
	}
	for _, m := range managers {
		if m != FieldManager && m != FieldManagerGFD {
			return false
		}
	}
	return true
}
