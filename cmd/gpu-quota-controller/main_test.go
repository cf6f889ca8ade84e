package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	kubefake "k8s.io/client-go/kubernetes/fake"
)

func TestParse(t *testing.T) {
	c, err := parse([]string{"--prometheus-url=http://p:9090", "--interval=10s"})
	if err != nil || c.promURL != "http://p:9090" || c.interval.Seconds() != 10 || !c.leaderElect || c.queryTimeout.Seconds() != 10 {
		t.Fatalf("parse = %+v, %v; want the query timeout clamped to the interval", c, err)
	}
	if c, err := parse([]string{"--prometheus-url=x", "--recording-rules-interval=1m"}); err != nil || c.recording != time.Minute {
		t.Fatalf("parse recording = %v, %v", c.recording, err)
	}
	if c, err := parse([]string{"--prometheus-url=x", "--dra-device-classes=gpu.gpuslice.io, shared.example.com"}); err != nil || len(c.deviceClasses) != 2 || c.deviceClasses[1] != "shared.example.com" {
		t.Fatalf("parse device classes = %v, %v", c.deviceClasses, err)
	}
	for args, want := range map[string]string{
		"":                                      "--prometheus-url is required",
		"--prometheus-url=x --interval=100ms":   "under 1s",
		"--prometheus-url=x --log-level=loud":   "--log-level",
		"--prometheus-url=x extra":              "unexpected arguments",
		"--prometheus-url=x --interval=forever": "invalid value",
		"--prometheus-url=x --interval=10s --query-timeout=11s":                         "at most --interval",
		"--prometheus-url=x --scrape-interval=0s":                                       "--scrape-interval",
		"--prometheus-url=x --dra-device-classes=GPU":                                   "device class \"GPU\"",
		"--prometheus-url=x --dra-device-classes=a,,b":                                  "device class \"\"",
		"--prometheus-url=x --dra-device-classes=a,b,a":                                 "listed twice",
		"--prometheus-url=x --dra-extended-resource-classes=A":                          "device class \"A\"",
		"--prometheus-url=x --dra-device-classes=a,v --dra-extended-resource-classes=v": "in both",
		"--prometheus-url=x --kueue-admission-check=" + strings.Repeat("a", 254):        "not a controller name",
		"--prometheus-url=x --recording-rules-interval=-1m":                             "negative",
		"--prometheus-url=x --recording-rules-interval=1m --agent-series=job=~\"a.*\"":  "equality matchers",
	} {
		_, err := parse(strings.Fields(args))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parse(%q) = %v, want an error containing %q", args, err, want)
		}
	}
}

// TestLeadershipHandsOver: of two replicas on one Lease only one runs the
// controller; when it stops, it hands the Lease back and the standby takes
// over without waiting for the lease to expire.
// TestBothEndTogether: the quota controller and the Kueue check run
// together; one failing (Kueue's CRDs missing) ends the other and the
// error comes back, rather than a check that silently never runs.
func TestBothEndTogether(t *testing.T) {
	fail := func(context.Context) error { return errors.New("no Kueue") }
	wait := func(ctx context.Context) error { <-ctx.Done(); return nil }
	if err := both(context.Background(), wait, fail); err == nil || !strings.Contains(err.Error(), "no Kueue") {
		t.Fatalf("both = %v, want the failure", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := both(ctx, wait, wait); err != nil {
		t.Fatalf("both, cancelled = %v", err)
	}
}

func TestLeadershipHandsOver(t *testing.T) {
	kube := kubefake.NewClientset()
	log := slog.New(slog.DiscardHandler)
	leading := make(chan string, 4)
	start := func(id string) (context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- runElected(ctx, kube, "gpuslice", "gpuslice-quota-controller", id, func(ctx context.Context) error {
				leading <- id
				<-ctx.Done()
				return nil
			}, log)
		}()
		return cancel, done
	}
	cancelA, doneA := start("a")
	first := <-leading
	cancelB, doneB := start("b")
	defer func() { cancelB(); <-doneB }()
	select {
	case id := <-leading:
		t.Fatalf("%s led while %s held the lease", id, first)
	case <-time.After(3 * time.Second):
	}
	if first != "a" {
		t.Fatalf("%s led first, want a", first)
	}
	cancelA()
	<-doneA
	select {
	case id := <-leading:
		if id != "b" {
			t.Fatalf("%s took over, want b", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the standby never took over (a lease that was not handed back expires after 15 s)")
	}
}
