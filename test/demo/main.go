// Command demo shows gpu-agent at work on the built-in fake GPU node, with
// no cluster: it starts a kubelet stand-in, runs the agent binary against
// it, admits a few example pods the way the kubelet does, shows per-pod
// metrics, holds two greedy pods to their strict shares and stops a memory
// hog, injects a GPU fault, restarts the kubelet and stops the agent,
// printing what happens.
// make demo runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/vgpu"
	"github.com/gpuslice/gpuslice/test/fakegpu"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

const resource = "nvidia.com/vgpu"

const nodeYAML = `# The demo's fake node: gpu-agent's built-in default, 4x A100-40GB.
preset: A100-40GB
count: 4
`

func main() {
	agent := flag.String("agent", "bin/gpu-agent", "gpu-agent binary to run")
	flag.Parse()
	if err := run(*agent, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

type pod struct {
	name   string
	slices int
}

func run(agentBin string, out io.Writer) error {
	if _, err := os.Stat(agentBin); err != nil {
		return fmt.Errorf("agent binary: %w (run make build)", err)
	}
	dir, err := os.MkdirTemp("", "gpuslice-demo")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	pluginDir := filepath.Join(dir, "device-plugins")
	if err := os.Mkdir(pluginDir, 0o755); err != nil {
		return err
	}
	workDir := filepath.Join(dir, "workloads")
	if err := os.Mkdir(workDir, 0o755); err != nil {
		return err
	}
	// The fake node's file: the built-in node, plus where workloads report.
	node := nodeYAML + "workloadDir: " + workDir + "\n"
	fakePath := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(fakePath, []byte(node), 0o600); err != nil {
		return err
	}
	// The same config gives the same UUIDs, so the demo can name GPUs by index.
	nodeCfg, err := fakegpu.Parse([]byte(node))
	if err != nil {
		return err
	}
	fakeNode, err := fakegpu.New(nodeCfg)
	if err != nil {
		return err
	}
	devs, err := fakeNode.Devices()
	if err != nil {
		return err
	}
	gpuIndex := map[string]int{}
	for _, d := range devs {
		gpuIndex[d.UUID] = d.Index
	}
	describe := func(ids []string) string { return describeIDs(ids, gpuIndex) }
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	step(out, "1. a kubelet stand-in listens on %s/kubelet.sock", pluginDir)
	k, err := kubeletstub.Start(pluginDir)
	if err != nil {
		return err
	}
	defer k.Stop()

	addr, err := freeAddr()
	if err != nil {
		return err
	}
	logPath := filepath.Join(dir, "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer func() { _ = logFile.Close() }()
	podResources := filepath.Join(dir, "pod-resources.sock")
	pr, err := k.ServePodResources(podResources)
	if err != nil {
		return err
	}
	defer pr.Stop()
	args := []string{"--gpu-backend=fake", "--fake-config=" + fakePath, "--device-plugin-dir=" + pluginDir,
		"--pod-resources-socket=" + podResources, "--metrics-address=" + addr, "--sample-interval=250ms",
		"--enforcement-state=" + filepath.Join(dir, "enforcement.json"), "--compute-policy=strict"}
	step(out, "2. start %s %s", agentBin, strings.Join(args, " "))
	cmd := exec.Command(agentBin, args...)
	cmd.Stderr = logFile
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	fail := func(err error) error {
		logs, _ := os.ReadFile(logPath)
		return fmt.Errorf("%w\nagent log:\n%s", err, logs)
	}

	p, err := k.WaitPlugin(ctx, resource)
	if err != nil {
		return fail(err)
	}
	regs := k.Registrations()
	fmt.Fprintf(out, "   registered %s (endpoint %s) %.1f ms after exec; ListAndWatch sent %d slices\n",
		regs[0].Request.ResourceName, regs[0].Request.Endpoint, float64(regs[0].At.Sub(started).Microseconds())/1000, len(p.Devices()))

	step(out, "3. admit pods the way the kubelet does (GetPreferredAllocation, then Allocate); placement: binpack")
	pods := []pod{{"training", 6}, {"notebook-a", 1}, {"notebook-b", 2}, {"inference", 3}, {"big-batch", 12}}
	allocs := map[string]kubeletstub.Allocation{}
	for _, pd := range pods {
		a, err := p.Allocate(ctx, pd.name, "main", pd.slices)
		if err != nil {
			return fail(err)
		}
		allocs[pd.name] = a
		fmt.Fprintf(out, "   %-11s nvidia.com/vgpu: %-2d -> %s\n", pd.name, pd.slices, describe(a.DeviceIDs))
	}
	if _, err := p.Allocate(ctx, "greedy", "main", 10); errors.Is(err, kubeletstub.ErrInsufficient) {
		fmt.Fprintf(out, "   %-11s nvidia.com/vgpu: %-2d -> rejected at admission: %v\n", "greedy", 10, err)
	} else {
		return fail(fmt.Errorf("over-request was not rejected: %w", err))
	}

	step(out, "4. slices per GPU")
	printGPUs(out, p, gpuIndex)

	step(out, "5. what the containers see (Allocate response)")
	for _, name := range []string{"notebook-b", "big-batch"} {
		r := allocs[name].Response
		fmt.Fprintf(out, "   %s:\n", name)
		keys := make([]string, 0, len(r.Envs))
		for k := range r.Envs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(out, "     %s=%s\n", k, r.Envs[k])
		}
		var devs []string
		for _, d := range r.Devices {
			devs = append(devs, d.HostPath)
		}
		fmt.Fprintf(out, "     devices: %s\n", strings.Join(devs, " "))
	}

	step(out, "6. per-pod GPU metrics: two pods on GPU 0 run fake GPU workloads (training wants 0.6 of a GPU, notebook-a 0.1)")
	if err := showMetrics(ctx, out, addr, workDir, allocs); err != nil {
		return fail(err)
	}

	step(out, "7. isolation on GPU 1 (strict policy): notebook-b (2 slices) and inference (3 slices) both run greedy workloads")
	if err := showIsolation(ctx, out, addr, workDir, allocs); err != nil {
		return fail(err)
	}

	step(out, "8. inject XID 79 on GPU 3 (edit %s)", filepath.Base(fakePath))
	injected := time.Now()
	if err := os.WriteFile(fakePath, []byte(node+"faults:\n  gpus:\n    - index: 3\n      xid: 79\n"), 0o600); err != nil {
		return err
	}
	if err := k.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool {
		return kubeletstub.CountHealth(k.PluginLocked(resource).DevicesLocked(), pluginapi.Unhealthy) == 8
	}); err != nil {
		return fail(fmt.Errorf("xid never reached the kubelet: %w", err))
	}
	fmt.Fprintf(out, "   kubelet saw all 8 slices of GPU 3 Unhealthy %.1f ms later\n", float64(time.Since(injected).Microseconds())/1000)
	a, err := p.Allocate(ctx, "after-xid", "main", 2)
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(out, "   %-11s nvidia.com/vgpu: %-2d -> %s (GPU 3 avoided)\n", "after-xid", 2, describe(a.DeviceIDs))
	if err := os.WriteFile(fakePath, []byte(node), 0o600); err != nil {
		return err
	}
	if err := k.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool {
		return kubeletstub.CountHealth(k.PluginLocked(resource).DevicesLocked(), pluginapi.Unhealthy) == 0
	}); err != nil {
		return fail(fmt.Errorf("recovery never reached the kubelet: %w", err))
	}
	fmt.Fprintln(out, "   fault cleared: GPU 3's slices are Healthy again")

	step(out, "9. restart the kubelet (sockets removed, kubelet.sock recreated)")
	before := len(k.Registrations())
	restarted := time.Now()
	if err := k.Restart(); err != nil {
		return err
	}
	if err := k.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool {
		pl := k.PluginLocked(resource)
		return k.RegistrationCountLocked() > before && pl != nil && len(pl.DevicesLocked()) == 32
	}); err != nil {
		return fail(fmt.Errorf("agent did not re-register: %w", err))
	}
	fmt.Fprintf(out, "   agent re-registered %.1f ms after the restart, with no operator action\n", float64(time.Since(restarted).Microseconds())/1000)

	step(out, "10. SIGTERM the agent")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case err := <-exited:
		if err != nil {
			return fail(fmt.Errorf("agent exit: %w", err))
		}
	case <-ctx.Done():
		return fail(errors.New("agent did not stop"))
	}
	if left, _ := filepath.Glob(filepath.Join(pluginDir, "gpuslice*.sock")); len(left) != 0 {
		return fail(fmt.Errorf("agent left its socket behind: %v", left))
	}
	fmt.Fprintln(out, "   agent exited 0 and removed its socket")
	fmt.Fprintln(out, "\ndemo finished.")
	return nil
}

func step(out io.Writer, format string, args ...any) {
	fmt.Fprintf(out, "\n"+format+"\n", args...)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

// describeIDs summarises slice IDs as "GPU 1 slices 0,1,2".
func describeIDs(ids []string, gpuIndex map[string]int) string {
	by := map[string][]string{}
	var order []string
	for _, id := range ids {
		s, err := vgpu.ParseSliceID(id)
		if err != nil {
			return strings.Join(ids, ",")
		}
		if _, ok := by[s.UUID]; !ok {
			order = append(order, s.UUID)
		}
		by[s.UUID] = append(by[s.UUID], fmt.Sprint(s.Index))
	}
	parts := make([]string, len(order))
	for i, u := range order {
		parts[i] = fmt.Sprintf("GPU %d slices %s", gpuIndex[u], strings.Join(by[u], ","))
	}
	return strings.Join(parts, " + ")
}

func printGPUs(out io.Writer, p *kubeletstub.Plugin, gpuIndex map[string]int) {
	holders := p.Holders()
	type gpu struct {
		uuid  string
		slots []string
	}
	var gpus []*gpu
	byUUID := map[string]*gpu{}
	for _, d := range p.Devices() {
		s, _ := vgpu.ParseSliceID(d.ID)
		g := byUUID[s.UUID]
		if g == nil {
			g = &gpu{uuid: s.UUID}
			byUUID[s.UUID] = g
			gpus = append(gpus, g)
		}
		for len(g.slots) <= s.Index {
			g.slots = append(g.slots, "")
		}
		h := strings.TrimSuffix(holders[d.ID], "/main")
		if h == "" {
			h = "-"
		}
		g.slots[s.Index] = h
	}
	sort.Slice(gpus, func(i, j int) bool { return gpuIndex[gpus[i].uuid] < gpuIndex[gpus[j].uuid] })
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "   GPU\tuuid\tfree\tslice 0..7 held by")
	for _, g := range gpus {
		free := 0
		for _, h := range g.slots {
			if h == "-" {
				free++
			}
		}
		fmt.Fprintf(tw, "   %d\t%s…\t%d/%d\t%s\n", gpuIndex[g.uuid], g.uuid[:13], free, len(g.slots), strings.Join(g.slots, " "))
	}
	tw.Flush()
}
