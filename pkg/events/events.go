// Package events records Kubernetes Events on pods for what the agent does
// to them, through client-go's event broadcaster, whose correlator
// aggregates repeats and rate-limits each pod's events.
package events

import (
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	"github.com/gpuslice/gpuslice/pkg/kube"
)

// Component names the agent as the events' source.
const Component = "gpuslice-agent"

// Pod identifies the pod an event is about.
type Pod struct {
	Namespace, Name, UID string
}

// Recorder records events on pods. The zero-cost Discard does nothing.
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

// Kubernetes records events through the API server.
type Kubernetes struct {
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
}

var _ Recorder = (*Kubernetes)(nil)

// New starts recording events from node through client. Stop ends it.
func New(client *kube.Client, node string, log *slog.Logger) *Kubernetes {
	b := record.NewBroadcasterWithCorrelatorOptions(record.CorrelatorOptions{})
	b.StartRecordingToSink(client.Events())
	if log != nil {
		b.StartEventWatcher(func(e *corev1.Event) {
			log.Debug("event recorded", "namespace", e.InvolvedObject.Namespace, "pod", e.InvolvedObject.Name, "reason", e.Reason)
		})
	}
	return &Kubernetes{broadcaster: b, recorder: b.NewRecorder(kube.Scheme, corev1.EventSource{Component: Component, Host: node})}
}

func ref(p Pod) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: p.Namespace, Name: p.Name, UID: types.UID(p.UID)}
}

// Normal records an informational event on the pod.
func (k *Kubernetes) Normal(p Pod, reason, message string) {
	k.recorder.Event(ref(p), corev1.EventTypeNormal, reason, message)
}

// Warning records a warning on the pod.
func (k *Kubernetes) Warning(p Pod, reason, message string) {
	k.recorder.Event(ref(p), corev1.EventTypeWarning, reason, message)
}

// Stop flushes and stops recording.
func (k *Kubernetes) Stop() { k.broadcaster.Shutdown() }
