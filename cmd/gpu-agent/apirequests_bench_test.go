package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpuslice/gpuslice/pkg/kube"
	"github.com/gpuslice/gpuslice/test/apiserver"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// BenchmarkAgentAPIRequests counts what one agent asks of the API server
// in steady state, from the API server's own audit log: the real binary
// on 8 fake H100s × 4 slices, registered with a kubelet stand-in, its
// node and 24 pods bound to it in a real kube-apiserver. After a minute
// to settle it counts, over GPUSLICE_API_WINDOW (11 minutes: two periods
// of its 5-minute label check and pod watch renewal), every request whose
// user agent is the agent's (kube.UserAgent) (a watch counted as it starts), per minute
// and by verb. Multiplied by the nodes, that is the load agents add to the
// API server.
func BenchmarkAgentAPIRequests(b *testing.B) {
	window, settle := 11*time.Minute, time.Minute
	if testing.Short() { // make bench-smoke: that it works, not the figure
		window, settle = 5*time.Second, 2*time.Second
	}
	if v := os.Getenv("GPUSLICE_API_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			b.Fatalf("GPUSLICE_API_WINDOW %q: want a duration of a minute or more", v)
		}
		window = d
	}
	audit := filepath.Join(b.TempDir(), "audit.log")
	srv := apiserver.StartWith(b, apiserver.Options{AuditLog: audit})
	client := srv.Clientset(b)
	ctx := context.Background()
	const node = "gpu-node"
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	for i := range 24 {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("job-%d", i), Namespace: "default"},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: "example/train"}}}}
		if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	fake := filepath.Join(b.TempDir(), "node.yaml")
	if err := os.WriteFile(fake, []byte("preset: H100-80GB\ncount: 8\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	var perMinute float64
	var byVerb map[string]int
	for b.Loop() {
		dir := b.TempDir()
		k, err := kubeletstub.Start(dir)
		if err != nil {
			b.Fatal(err)
		}
		cmd, _ := startBenchAgent(b, dir, "--fake-config="+fake, "--slices-per-gpu=4", "--kubeconfig="+srv.Kubeconfig, "--node-name="+node)
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			if err == nil && n.Labels["gpuslice.io/slices"] != "" {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("the agent never labelled its node")
			}
		}
		time.Sleep(settle) // start-up's writes are not the steady state
		from := time.Now()
		time.Sleep(window)
		to := time.Now()
		stopBenchAgent(b, cmd)
		k.Stop()
		var startup int
		byVerb, startup = agentRequests(b, audit, from, to)
		if startup == 0 { // the labels were written: the count must see them
			b.Fatal("no request of the agent's found in the audit log before the window: the count is blind")
		}
		total := 0
		for _, n := range byVerb {
			total += n
		}
		perMinute = float64(total) / to.Sub(from).Minutes()
	}
	verbs := make([]string, 0, len(byVerb))
	for v := range byVerb {
		verbs = append(verbs, v)
	}
	sort.Strings(verbs)
	for _, v := range verbs {
		b.ReportMetric(float64(byVerb[v])/window.Minutes(), v+"/min")
	}
	b.ReportMetric(perMinute, "requests/min")
}

// agentRequests counts the agent's requests in the audit log received in
// [from, to), by verb, and those before from: non-watch requests at
// completion, watches as they start.
func agentRequests(b *testing.B, path string, from, to time.Time) (map[string]int, int) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	out := map[string]int{}
	others := map[string]int{}
	before, othersBefore := 0, map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			Stage, Verb, UserAgent   string
			RequestReceivedTimestamp time.Time
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			b.Fatalf("audit log: %v", err)
		}
		if (ev.Verb == "watch") != (ev.Stage == "ResponseStarted") || (ev.Verb != "watch" && ev.Stage != "ResponseComplete") {
			continue
		}
		agent := ev.UserAgent == kube.UserAgent
		if ev.RequestReceivedTimestamp.Before(from) {
			if agent {
				before++
			} else {
				othersBefore[strings.SplitN(ev.UserAgent, " ", 2)[0]]++
			}
			continue
		}
		if !ev.RequestReceivedTimestamp.Before(to) {
			continue
		}
		if agent {
			out[ev.Verb]++
		} else {
			others[strings.SplitN(ev.UserAgent, " ", 2)[0]]++
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	b.Logf("in the window, the agent's requests %v, other clients' %v; before it, the agent's %d, other clients' %v", out, others, before, othersBefore)
	return out, before
}
