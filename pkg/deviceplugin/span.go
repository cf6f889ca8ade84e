package deviceplugin

import (
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// holdBack is what the plugin offers Unhealthy after refusing a request no
// one GPU could hold (--span=never): enough of the free slices that the
// node's free total drops below the refused size, so that the scheduler,
// which sees only that total, stops sending the same pod back at once. A
// Deployment whose pod cannot fit on one GPU would otherwise fail
// admission in a loop, a new failed pod every few seconds. The hold-back
// lasts a backoff that doubles with each refusal up to a bound, and resets
// once refusals stop.
type holdBack struct {
	ids   map[string]bool
	size  int // the refused request's size
	until time.Time
	next  time.Duration // the next hold-back's length
	last  time.Time     // the last refusal
	timer *time.Timer
	gen   int // which hold-back the timer ends
}

// spans reports whether ids are on more than one GPU.
func spans(ids []string) bool {
	var first string
	for _, id := range ids {
		s, err := vgpu.ParseSliceID(id)
		if err != nil {
			continue
		}
		if first == "" {
			first = s.UUID
		} else if s.UUID != first {
			return true
		}
	}
	return false
}

// refuseSpan refuses a container's request that no one GPU can hold on a
// --span=never node, holding back free slices (from the kubelet's
// available ones) so the scheduler stops placing the same size here for a
// while.
func (p *Plugin) refuseSpan(available []string, size int) error {
	n, until := p.holdBack(available, size, time.Now())
	msg := fmt.Sprintf("no GPU on this node has %d free slices and the node does not span GPUs (--span=never)", size)
	if n > 0 {
		msg += fmt.Sprintf("; %d free slices are offered Unhealthy until %s so the scheduler does not send it back at once", n, until.UTC().Format(time.RFC3339))
	}
	p.log.Warn("refused a request no one GPU can hold", "size", size, "held_back", n, "until", until)
	return status.Error(codes.FailedPrecondition, msg)
}

// holdBack records a refusal of size at now and holds back free slices;
// it returns how many and until when.
func (p *Plugin) holdBack(available []string, size int, now time.Time) (int, time.Time) {
	if p.opts.SpanHoldBack <= 0 {
		return 0, time.Time{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	h := &p.held
	if h.next == 0 || now.Sub(h.last) > 2*p.opts.SpanHoldBackMax {
		h.next = p.opts.SpanHoldBack
	}
	free := map[string][]string{} // GPU UUID -> free slice IDs
	var order []string
	total := 0
	for _, id := range available {
		s, err := vgpu.ParseSliceID(id)
		if err != nil || !p.health[s.UUID].Healthy || p.draHeld[s.UUID] || h.ids[id] {
			continue
		}
		if _, ok := free[s.UUID]; !ok {
			order = append(order, s.UUID)
		}
		free[s.UUID] = append(free[s.UUID], id)
		total++
	}
	// The fewest free first: the fragments least use to anyone.
	sort.SliceStable(order, func(i, j int) bool { return len(free[order[i]]) < len(free[order[j]]) })
	want := total - (size - 1)
	ids := map[string]bool{}
	for k := range h.ids {
		ids[k] = true
	}
	for _, uuid := range order {
		for _, id := range free[uuid] {
			if want <= 0 {
				break
			}
			ids[id] = true
			want--
		}
	}
	h.ids, h.last, h.until, h.size = ids, now, now.Add(h.next), size
	h.gen++
	gen, length := h.gen, h.next
	h.next = min(2*h.next, p.opts.SpanHoldBackMax)
	if h.timer != nil {
		h.timer.Stop()
	}
	h.timer = time.AfterFunc(length, func() { p.endHoldBack(gen, "the hold-back ended") })
	p.notifyLocked()
	p.tellOfferedLocked()
	return len(ids), h.until
}

// endHoldBack offers the held-back slices again, unless a later refusal
// replaced the hold-back gen.
func (p *Plugin) endHoldBack(gen int, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held.gen != gen || len(p.held.ids) == 0 {
		return
	}
	p.log.Info("offering held-back slices again", "slices", len(p.held.ids), "why", why)
	p.held.ids = nil
	p.notifyLocked()
	p.tellOfferedLocked()
}

// Room ends a hold-back as soon as one GPU has room for the request that
// was refused: free is each GPU's free slices (by UUID), held-back ones
// included, as the agent last sampled them (0 on a GPU that may not be
// allocated from). The refused pod's next try
// then lands on that GPU.
func (p *Plugin) Room(free map[string]int) {
	p.mu.Lock()
	if len(p.held.ids) == 0 {
		p.mu.Unlock()
		return
	}
	gen, size := p.held.gen, p.held.size
	room := false
	for uuid, n := range free {
		if n >= size && p.health[uuid].Healthy && !p.draHeld[uuid] {
			room = true
		}
	}
	p.mu.Unlock()
	if room {
		p.endHoldBack(gen, fmt.Sprintf("a GPU has %d free slices", size))
	}
}

// OnOffered sets f, called (under the plugin's lock: it must not block)
// with the number of slices offered Healthy whenever a hold-back starts or
// ends, so that the node's allocatable can be told to the scheduler at
// once rather than at the kubelet's next node status update, during which
// it would keep sending pods that fail admission.
func (p *Plugin) OnOffered(f func(healthy int)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onOffered = f
}

// tellOfferedLocked calls onOffered with the slices offered Healthy; p.mu
// is held.
func (p *Plugin) tellOfferedLocked() {
	if p.onOffered == nil || p.opts.NoSlices {
		return
	}
	n := 0
	for _, id := range p.layout.SliceIDs() {
		if p.offeredLocked(id) {
			n++
		}
	}
	p.onOffered(n)
}

// HeldBack is how many slices are held back after a refused span, and
// until when.
func (p *Plugin) HeldBack() (int, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.held.ids), p.held.until
}

// notifyLocked tells ListAndWatch the device list changed; p.mu is held.
func (p *Plugin) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// checkSpan refuses, on a --span=never node, a container given slices of
// more than one GPU (the kubelet may pick devices itself).
func (p *Plugin) checkSpan(ids []string) error {
	if p.opts.Span == contract.SpanNever && spans(ids) {
		return status.Errorf(codes.FailedPrecondition, "the slices %v are on more than one GPU and the node does not span GPUs (--span=never)", ids)
	}
	return nil
}
