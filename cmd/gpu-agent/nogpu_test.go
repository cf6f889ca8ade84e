package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/promtest"
)

// TestAgentWithoutGPUsIdles: on a node without GPUs (no driver library, or
// a driver that lists none), as when a DaemonSet selects a node it should
// not, the agent neither crash-loops nor offers anything: it stays up and
// ready, registers nothing with the kubelet, says why on /metrics and in
// a warning, and exits, for the kubelet to restart it, once GPUs appear.
func TestAgentWithoutGPUsIdles(t *testing.T) {
	t.Parallel()
	t.Run("no driver", func(t *testing.T) {
		t.Parallel()
		st := stubKubelet(t, "preset: A100-40GB\ncount: 1\n")
		metrics, probes := freePort(t), freePort(t)
		a := startAgent(t, "--nvml-library=/nonexistent/libnvidia-ml.so.1", "--device-plugin-dir="+st.dir, "--pod-resources-socket="+st.podres,
			"--metrics-address="+metrics, "--health-address="+probes)
		waitReady(t, probes)
		checkIdle(t, a, st, metrics, "no-driver")
		if out := a.stderr.String(); !strings.Contains(out, "--gpu-backend=fake") || !strings.Contains(out, "/nonexistent/libnvidia-ml.so.1") {
			t.Errorf("the warning does not name the library and --gpu-backend=fake:\n%s", out)
		}
	})
	t.Run("no device then GPUs", func(t *testing.T) {
		t.Parallel()
		st := stubKubelet(t, "gpus: []\n")
		metrics, probes := freePort(t), freePort(t)
		a := startAgent(t, append(st.agentArgs(), "--metrics-address="+metrics, "--health-address="+probes, "--health-probe-interval=100ms")...)
		waitReady(t, probes)
		checkIdle(t, a, st, metrics, "no-device")
		if err := os.WriteFile(st.fake, []byte("preset: A100-40GB\ncount: 1\nworkloadDir: "+st.work+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if code := a.wait(t); code == 0 || !strings.Contains(a.stderr.String(), "1 GPUs appeared on this node: restarting to serve them") {
			t.Errorf("the agent did not exit to serve the GPU that appeared: exit %d\n%s", code, a.stderr.String())
		}
	})
}

// checkIdle checks an agent idles without GPUs for a while: running,
// nothing registered, the reason on /metrics and in a warning.
func checkIdle(t *testing.T, a *agentProc, st *stubbed, metrics, reason string) {
	t.Helper()
	mfs := promtest.Scrape(t, "http://"+metrics+"/metrics")
	s := mfs["gpuslice_agent_no_gpu"].GetMetric()
	if len(s) != 1 || s[0].GetGauge().GetValue() != 1 || s[0].GetLabel()[0].GetValue() != reason {
		t.Errorf("gpuslice_agent_no_gpu = %v; want 1 with reason %s", s, reason)
	}
	time.Sleep(time.Second)
	if exited(a) {
		t.Fatalf("the agent exited on a node without GPUs:\n%s", a.stderr.String())
	}
	if regs := st.kubelet.Registrations(); len(regs) != 0 {
		t.Errorf("the agent registered %v with the kubelet on a node without GPUs", regs)
	}
	if !strings.Contains(a.stderr.String(), `msg="no GPU on this node: nothing is offered or enforced; looking again" reason=`+reason) {
		t.Errorf("no warning saying why:\n%s", a.stderr.String())
	}
}

// exited reports whether the agent's process has ended, leaving its
// status for wait.
func exited(a *agentProc) bool {
	select {
	case err := <-a.done:
		a.done <- err
		return true
	default:
		return false
	}
}
