// Package events records Kubernetes Events on pods for what the agent does
// to them. Events are sent in the background, so an action never waits on
// the API server, and repeats of the same reason on the same pod within 5
// minutes are folded into the next event's count rather than sent, so a
// container throttled or over its memory again and again cannot flood the
// API server.
package events

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/gpuslice/gpuslice/pkg/kube"
)

// Component names the agent as the events' source.
const Component = "gpuslice-agent"

// StopGrace is how long Stop lets queued events be posted before it drops
// them.
const StopGrace = 3 * time.Second

// Window is how long repeats of one reason on one pod are held back.
const Window = 5 * time.Minute

// Pod identifies the pod an event is about.
type Pod struct {
	Namespace, Name, UID string
}

// Recorder records events on pods.
type Recorder interface {
	// Normal records an informational event.
	Normal(p Pod, reason, message string)
	// Warning records a warning.
	Warning(p Pod, reason, message string)
}

// Discard is a Recorder that records nothing, for agents without a
// Kubernetes client.
type Discard struct{}

// Normal does nothing.
func (Discard) Normal(Pod, string, string) {}

// Warning does nothing.
func (Discard) Warning(Pod, string, string) {}

// Sink is where events go; *kube.Client posts them to the API server.
type Sink interface {
	PostEvent(ctx context.Context, e kube.Event) error
}

var _ Sink = (*kube.Client)(nil)

// Kubernetes records events through the API server.
type Kubernetes struct {
	client Sink
	node   string
	log    *slog.Logger
	queue  chan kube.Event
	done   chan struct{}
	// ctx ends the posts in flight when Stop's grace has passed.
	ctx    context.Context
	cancel context.CancelFunc
	grace  time.Duration

	mu     sync.Mutex
	dedup  *dedup // pod UID + reason, bounded
	closed bool
}

var _ Recorder = (*Kubernetes)(nil)

// New starts recording events from node through client. Stop ends it.
func New(client Sink, node string, log *slog.Logger) *Kubernetes {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Kubernetes{client: client, node: node, log: log, queue: make(chan kube.Event, 256), done: make(chan struct{}),
		dedup: newDedup(Window, maxKeys), grace: StopGrace}
	k.ctx, k.cancel = context.WithCancel(context.Background())
	go k.send()
	return k
}

// Normal records an informational event on the pod.
func (k *Kubernetes) Normal(p Pod, reason, message string) { k.record(p, "Normal", reason, message) }

// Warning records a warning on the pod.
func (k *Kubernetes) Warning(p Pod, reason, message string) { k.record(p, "Warning", reason, message) }

func (k *Kubernetes) record(p Pod, typ, reason, message string) {
	key := p.UID + "/" + p.Namespace + "/" + p.Name + "/" + reason
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	count, send := k.dedup.admit(key, now)
	if !send {
		return
	}
	e := kube.Event{Namespace: p.Namespace, Pod: p.Name, PodUID: p.UID, Type: typ, Reason: reason, Message: message,
		Component: Component, Host: k.node, Count: count, Time: now}
	select {
	case k.queue <- e:
	default:
		k.log.Warn("event dropped: queue full", "namespace", p.Namespace, "pod", p.Name, "reason", reason)
	}
}

func (k *Kubernetes) send() {
	defer close(k.done)
	for e := range k.queue {
		if k.ctx.Err() != nil {
			continue // stopping, and past the grace: what is left is dropped
		}
		ctx, cancel := context.WithTimeout(k.ctx, 10*time.Second)
		if err := k.client.PostEvent(ctx, e); err != nil {
			k.log.Warn("event not recorded", "namespace", e.Namespace, "pod", e.Pod, "reason", e.Reason, "err", err)
		}
		cancel()
	}
}

// Stop sends what is queued, for StopGrace at most, and stops; later
// events are dropped.
func (k *Kubernetes) Stop() {
	k.mu.Lock()
	if !k.closed {
		k.closed = true
		close(k.queue)
	}
	k.mu.Unlock()
	select {
	case <-k.done:
	case <-time.After(k.grace):
		// An API server that does not answer must not hold the agent's
		// shutdown: end the post in flight and drop the rest.
		k.cancel()
		<-k.done
	}
	k.cancel()
}
