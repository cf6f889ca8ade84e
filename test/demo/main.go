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

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
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

// demo is one run of the demo: the fake node's files, the kubelet
// stand-in and the agent.
type demo struct {
	out                     io.Writer
	dir, pluginDir, workDir string
	node, fakePath, addr    string
	logPath                 string
	gpuIndex                map[string]int
	k                       *kubeletstub.Kubelet
	p                       *kubeletstub.Plugin
	cmd                     *exec.Cmd
	exited                  chan error
	allocs                  map[string]kubeletstub.Allocation
	cleanup                 []func()
}

func run(agentBin string, out io.Writer) error {
	if _, err := os.Stat(agentBin); err != nil {
		return fmt.Errorf("agent binary: %w (run make build)", err)
	}
	d := &demo{out: out, allocs: map[string]kubeletstub.Allocation{}}
	defer d.close()
	if err := d.prepare(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := d.startAgent(ctx, agentBin); err != nil {
		return err
	}
	for _, stage := range []func(context.Context) error{d.admit, d.showResponses, d.metrics, d.isolation, d.injectXID, d.restartKubelet, d.stopAgent} {
		if err := stage(ctx); err != nil {
			logs, _ := os.ReadFile(d.logPath)
			return fmt.Errorf("%w\nagent log:\n%s", err, logs)
		}
	}
	fmt.Fprintln(out, "\ndemo finished.")
	return nil
}

func (d *demo) close() {
	for i := len(d.cleanup) - 1; i >= 0; i-- {
		d.cleanup[i]()
	}
}

// prepare writes the fake node's file and learns its GPUs' indices.
func (d *demo) prepare() error {
	var err error
	if d.dir, err = os.MkdirTemp("", "gpuslice-demo"); err != nil {
		return err
	}
	d.cleanup = append(d.cleanup, func() { _ = os.RemoveAll(d.dir) })
	d.pluginDir, d.workDir = filepath.Join(d.dir, "device-plugins"), filepath.Join(d.dir, "workloads")
	for _, p := range []string{d.pluginDir, d.workDir} {
		if err := os.Mkdir(p, 0o755); err != nil {
			return err
		}
	}
	// The fake node's file: the built-in node, plus where workloads report.
	d.node = nodeYAML + "workloadDir: " + d.workDir + "\n"
	d.fakePath = filepath.Join(d.dir, "node.yaml")
	if err := os.WriteFile(d.fakePath, []byte(d.node), 0o600); err != nil {
		return err
	}
	// The same config gives the same UUIDs, so the demo can name GPUs by index.
	nodeCfg, err := fakegpu.Parse([]byte(d.node))
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
	d.gpuIndex = map[string]int{}
	for _, dev := range devs {
		d.gpuIndex[dev.UUID] = dev.Index
	}
	return nil
}

func (d *demo) describe(ids []string) string { return describeIDs(ids, d.gpuIndex) }

// startAgent starts the kubelet stand-in and the agent, and waits for it
// to register.
func (d *demo) startAgent(ctx context.Context, agentBin string) error {
	step(d.out, "1. a kubelet stand-in listens on %s/kubelet.sock", d.pluginDir)
	var err error
	if d.k, err = kubeletstub.Start(d.pluginDir); err != nil {
		return err
	}
	d.cleanup = append(d.cleanup, d.k.Stop)
	if d.addr, err = freeAddr(); err != nil {
		return err
	}
	d.logPath = filepath.Join(d.dir, "agent.log")
	logFile, err := os.Create(d.logPath)
	if err != nil {
		return err
	}
	d.cleanup = append(d.cleanup, func() { _ = logFile.Close() })
	podResources := filepath.Join(d.dir, "pod-resources.sock")
	pr, err := d.k.ServePodResources(podResources)
	if err != nil {
		return err
	}
	d.cleanup = append(d.cleanup, pr.Stop)
	args := []string{"--gpu-backend=fake", "--fake-config=" + d.fakePath, "--device-plugin-dir=" + d.pluginDir,
		"--pod-resources-socket=" + podResources, "--metrics-address=" + d.addr, "--health-address=127.0.0.1:0", "--sample-interval=250ms",
		"--enforcement-state=" + filepath.Join(d.dir, "enforcement.json"), "--compute-policy=strict"}
	step(d.out, "2. start %s %s", agentBin, strings.Join(args, " "))
	d.cmd = exec.Command(agentBin, args...)
	d.cmd.Stderr = logFile
	started := time.Now()
	if err := d.cmd.Start(); err != nil {
		return err
	}
	d.exited = make(chan error, 1)
	go func() { d.exited <- d.cmd.Wait() }()
	d.cleanup = append(d.cleanup, func() {
		if d.cmd.ProcessState == nil {
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
	})
	if d.p, err = d.k.WaitPlugin(ctx, resource); err != nil {
		logs, _ := os.ReadFile(d.logPath)
		return fmt.Errorf("%w\nagent log:\n%s", err, logs)
	}
	regs := d.k.Registrations()
	fmt.Fprintf(d.out, "   registered %s (endpoint %s) %.1f ms after exec; ListAndWatch sent %d slices\n",
		regs[0].Request.ResourceName, regs[0].Request.Endpoint, float64(regs[0].At.Sub(started).Microseconds())/1000, len(d.p.Devices()))
	return nil
}

// admit admits pods as the kubelet does, and one that does not fit.
func (d *demo) admit(ctx context.Context) error {
	step(d.out, "3. admit pods the way the kubelet does (GetPreferredAllocation, then Allocate); placement: binpack")
	pods := []pod{{"training", 6}, {"notebook-a", 1}, {"notebook-b", 2}, {"inference", 3}, {"big-batch", 12}}
	for _, pd := range pods {
		a, err := d.p.Allocate(ctx, pd.name, "main", pd.slices)
		if err != nil {
			return err
		}
		d.allocs[pd.name] = a
		fmt.Fprintf(d.out, "   %-11s nvidia.com/vgpu: %-2d -> %s\n", pd.name, pd.slices, d.describe(a.DeviceIDs))
	}
	if _, err := d.p.Allocate(ctx, "greedy", "main", 10); errors.Is(err, kubeletstub.ErrInsufficient) {
		fmt.Fprintf(d.out, "   %-11s nvidia.com/vgpu: %-2d -> rejected at admission: %v\n", "greedy", 10, err)
	} else {
		return fmt.Errorf("over-request was not rejected: %w", err)
	}
	step(d.out, "4. slices per GPU")
	printGPUs(d.out, d.p, d.gpuIndex)
	return nil
}

// showResponses prints what two containers were given.
func (d *demo) showResponses(context.Context) error {
	step(d.out, "5. what the containers see (Allocate response)")
	for _, name := range []string{"notebook-b", "big-batch"} {
		r := d.allocs[name].Response
		fmt.Fprintf(d.out, "   %s:\n", name)
		keys := make([]string, 0, len(r.Envs))
		for k := range r.Envs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(d.out, "     %s=%s\n", k, r.Envs[k])
		}
		var devs []string
		for _, dev := range r.Devices {
			devs = append(devs, dev.HostPath)
		}
		fmt.Fprintf(d.out, "     devices: %s\n", strings.Join(devs, " "))
	}
	return nil
}

func (d *demo) metrics(ctx context.Context) error {
	step(d.out, "6. per-pod GPU metrics: two pods on GPU 0 run fake GPU workloads (training wants 0.6 of a GPU, notebook-a 0.1)")
	return showMetrics(ctx, d.out, d.addr, d.workDir, d.allocs)
}

func (d *demo) isolation(ctx context.Context) error {
	step(d.out, "7. isolation on GPU 1 (strict policy): notebook-b (2 slices) and inference (3 slices) both run greedy workloads")
	return showIsolation(ctx, d.out, d.addr, d.workDir, d.allocs)
}

// injectXID faults GPU 3, shows the kubelet stop offering its slices and
// placement avoid it, and clears the fault.
func (d *demo) injectXID(ctx context.Context) error {
	step(d.out, "8. inject XID 79 on GPU 3 (edit %s)", filepath.Base(d.fakePath))
	injected := time.Now()
	if err := os.WriteFile(d.fakePath, []byte(d.node+"faults:\n  gpus:\n    - index: 3\n      xid: 79\n"), 0o600); err != nil {
		return err
	}
	if err := d.k.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool {
		return kubeletstub.CountHealth(k.PluginLocked(resource).DevicesLocked(), pluginapi.Unhealthy) == 8
	}); err != nil {
		return fmt.Errorf("xid never reached the kubelet: %w", err)
	}
	fmt.Fprintf(d.out, "   kubelet saw all 8 slices of GPU 3 Unhealthy %.1f ms later\n", float64(time.Since(injected).Microseconds())/1000)
	a, err := d.p.Allocate(ctx, "after-xid", "main", 2)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "   %-11s nvidia.com/vgpu: %-2d -> %s (GPU 3 avoided)\n", "after-xid", 2, d.describe(a.DeviceIDs))
	if err := os.WriteFile(d.fakePath, []byte(d.node), 0o600); err != nil {
		return err
	}
	if err := d.k.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool {
		return kubeletstub.CountHealth(k.PluginLocked(resource).DevicesLocked(), pluginapi.Unhealthy) == 0
	}); err != nil {
		return fmt.Errorf("recovery never reached the kubelet: %w", err)
	}
	fmt.Fprintln(d.out, "   fault cleared: GPU 3's slices are Healthy again")
	return nil
}

func (d *demo) restartKubelet(ctx context.Context) error {
	step(d.out, "9. restart the kubelet (sockets removed, kubelet.sock recreated)")
	before := len(d.k.Registrations())
	restarted := time.Now()
	if err := d.k.Restart(); err != nil {
		return err
	}
	if err := d.k.WaitFor(ctx, func(k *kubeletstub.Kubelet) bool {
		pl := k.PluginLocked(resource)
		return k.RegistrationCountLocked() > before && pl != nil && len(pl.DevicesLocked()) == 32
	}); err != nil {
		return fmt.Errorf("agent did not re-register: %w", err)
	}
	fmt.Fprintf(d.out, "   agent re-registered %.1f ms after the restart, with no operator action\n", float64(time.Since(restarted).Microseconds())/1000)
	return nil
}

func (d *demo) stopAgent(ctx context.Context) error {
	step(d.out, "10. SIGTERM the agent")
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case err := <-d.exited:
		if err != nil {
			return fmt.Errorf("agent exit: %w", err)
		}
	case <-ctx.Done():
		return errors.New("agent did not stop")
	}
	if left, _ := filepath.Glob(filepath.Join(d.pluginDir, "gpuslice*.sock")); len(left) != 0 {
		return fmt.Errorf("agent left its socket behind: %v", left)
	}
	fmt.Fprintln(d.out, "   agent exited 0 and removed its socket")
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
