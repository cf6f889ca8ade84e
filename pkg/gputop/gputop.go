// Package gputop turns gpuslice's metrics into the tables kubectl-gpuslice
// prints: per pod, per node and per GPU, and who holds the slices of a
// node's GPUs. The tables are pure functions of samples; where the samples
// come from (Prometheus' query API, or agents' /metrics) is a Source.
package gputop

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// Sample is one series' current value.
type Sample struct {
	// Name is the metric name.
	Name string
	// Labels are the series' labels; "instance" names the node.
	Labels map[string]string
	// Value is the current value.
	Value float64
}

// Source gives the current samples of the named metrics.
type Source interface {
	Samples(ctx context.Context, names []string) ([]Sample, error)
}

// Metrics the tables read.
var Metrics = []string{ // all of them in contract.ReadMetrics
	contract.MetricDeviceInfo, contract.MetricDeviceMemoryTotalBytes, contract.MetricDeviceMemoryUsedBytes,
	contract.MetricDeviceUtilizationRatio, contract.MetricDeviceHealthy,
	contract.MetricSlicesCapacity, contract.MetricSlicesAllocated,
	contract.MetricContainerSlices, contract.MetricContainerMemoryUsedBytes, contract.MetricContainerMemoryLimitBytes,
	contract.MetricContainerSMUtilization, contract.MetricContainerComputeLimit,
	contract.MetricContainerLastActive,
	contract.MetricDeviceMIGMode, contract.MetricMIGInstanceInfo, contract.MetricMIGInstanceHealthy,
	contract.MetricMIGInstanceMemoryUsed, contract.MetricContainerComputeUnmeasured,
	contract.MetricAgentLastSample,
}

// Container is one container's use of one GPU.
type Container struct {
	Node         string  `json:"node"`
	Namespace    string  `json:"namespace"`
	Pod          string  `json:"pod"`
	Container    string  `json:"container"`
	GPU          string  `json:"gpu"`
	UUID         string  `json:"uuid"`
	Slices       int     `json:"slices"`
	MemoryUsed   float64 `json:"memoryUsedBytes"`
	MemoryLimit  float64 `json:"memoryLimitBytes"`
	Compute      float64 `json:"computeRatio"`
	ComputeLimit float64 `json:"computeLimitRatio"`
	// ComputeUnmeasured is true where the agent cannot measure the
	// container's compute (a MIG instance without GPM, or shared):
	// Compute is then unknown, not zero.
	ComputeUnmeasured bool `json:"computeUnmeasured,omitempty"`
	// LastActive is zero when the container never used the GPU.
	LastActive time.Time `json:"lastActive,omitzero"`
}

// GPU is one GPU's state.
type GPU struct {
	Node        string      `json:"node"`
	Index       string      `json:"index"`
	UUID        string      `json:"uuid"`
	Model       string      `json:"model"`
	Slices      int         `json:"slices"`
	Allocated   int         `json:"allocated"`
	MemoryUsed  float64     `json:"memoryUsedBytes"`
	MemoryTotal float64     `json:"memoryTotalBytes"`
	Utilization float64     `json:"utilizationRatio"`
	Healthy     bool        `json:"healthy"`
	Holders     []Container `json:"holders,omitempty"`
	// MIG is "enabled" (in force) or "pending" (from the GPU's next
	// reset) when the GPU is in MIG mode; it is then not cut into slices,
	// and Instances are its MIG instances.
	MIG       string        `json:"mig,omitempty"`
	Instances []MIGInstance `json:"migInstances,omitempty"`
}

// MIGInstance is one MIG instance of a GPU, the memory in use on it and
// who holds it (through a device plugin or a DRA claim).
type MIGInstance struct {
	UUID       string      `json:"uuid"`
	Profile    string      `json:"profile"`
	Resource   string      `json:"resource,omitempty"`
	Healthy    bool        `json:"healthy"`
	MemoryUsed float64     `json:"memoryUsedBytes"`
	Holders    []Container `json:"holders,omitempty"`
}

// Model is what the samples say, organised.
type Model struct {
	GPUs       []GPU
	Containers []Container
	// Unreachable are the nodes whose agent could not be read, or whose
	// last sample is older than MaxSampleAge: their GPUs and containers
	// are left out, never shown with old figures.
	Unreachable []Unreachable
}

// Unreachable is a node whose figures are not shown, and why.
type Unreachable struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

// MaxSampleAge is how old an agent's last sample may be before its node's
// figures are reported unreachable instead of shown: many sample
// intervals (1 s by default) and scrape intervals.
const MaxSampleAge = 2 * time.Minute

type gpuKey struct{ node, uuid string }

type ctrKey struct{ node, ns, pod, ctr, uuid string }

type migKey struct{ node, uuid string }

// builder gathers samples by GPU, container and MIG instance.
type builder struct {
	gpus      map[gpuKey]*GPU
	ctrs      map[ctrKey]*Container
	instances map[migKey]*MIGInstance
	migState  map[gpuKey][2]bool // in force, pending
}

// Build organises samples into GPUs and containers, sorted.
func Build(samples []Sample) Model {
	b := &builder{gpus: map[gpuKey]*GPU{}, ctrs: map[ctrKey]*Container{}, instances: map[migKey]*MIGInstance{}, migState: map[gpuKey][2]bool{}}
	for _, s := range samples {
		if !b.addMIG(s) {
			b.add(s)
		}
	}
	return b.model()
}

// BuildAt is Build for a source that could not read the nodes in
// unreachable (node: why): those nodes, those whose SampleAge is over
// maxAge, and those with a SampleAge but no current sample time (a
// Prometheus no longer scraping their agent) are listed in
// Model.Unreachable and their figures left out.
func BuildAt(samples []Sample, unreachable map[string]string, maxAge time.Duration) Model {
	why := map[string]string{}
	for node, reason := range unreachable {
		why[node] = reason
	}
	current := map[string]bool{} // nodes whose agent's last sample time is read now
	for _, s := range samples {
		if s.Name == contract.MetricAgentLastSample {
			current[s.Labels["instance"]] = true
		}
	}
	for _, s := range samples {
		node := s.Labels["instance"]
		if s.Name != SampleAge || why[node] != "" {
			continue
		}
		age := time.Duration(s.Value * float64(time.Second)).Round(time.Second)
		switch {
		case !current[node]: // Prometheus no longer scrapes it: its series went stale
			why[node] = fmt.Sprintf("its agent is not being scraped; its last sample is %s old", age)
		case age > maxAge:
			why[node] = fmt.Sprintf("its agent's last sample is %s old", age)
		}
	}
	kept := samples[:0:0]
	for _, s := range samples {
		if why[s.Labels["instance"]] == "" {
			kept = append(kept, s)
		}
	}
	m := Build(kept)
	for node, reason := range why {
		m.Unreachable = append(m.Unreachable, Unreachable{Node: node, Reason: reason})
	}
	sort.Slice(m.Unreachable, func(i, j int) bool { return m.Unreachable[i].Node < m.Unreachable[j].Node })
	return m
}

func (b *builder) gpu(s Sample) *GPU {
	k := gpuKey{s.Labels["instance"], s.Labels["uuid"]}
	g := b.gpus[k]
	if g == nil {
		g = &GPU{Node: k.node, UUID: k.uuid, Index: s.Labels["gpu"], Healthy: true}
		b.gpus[k] = g
	}
	return g
}

func (b *builder) ctr(s Sample) *Container {
	k := ctrKey{s.Labels["instance"], s.Labels["namespace"], s.Labels["pod"], s.Labels["container"], s.Labels["uuid"]}
	c := b.ctrs[k]
	if c == nil {
		c = &Container{Node: k.node, Namespace: k.ns, Pod: k.pod, Container: k.ctr, UUID: k.uuid, GPU: s.Labels["gpu"]}
		b.ctrs[k] = c
	}
	return c
}

func (b *builder) instance(s Sample) *MIGInstance {
	k := migKey{s.Labels["instance"], s.Labels["mig_uuid"]}
	in := b.instances[k]
	if in == nil {
		in = &MIGInstance{UUID: k.uuid, Healthy: true}
		b.instances[k] = in
		g := b.gpu(s)
		g.Instances = append(g.Instances, MIGInstance{UUID: k.uuid}) // filled in by model
	}
	return in
}

// addMIG takes a sample of the MIG metrics; false for any other.
func (b *builder) addMIG(s Sample) bool {
	switch s.Name {
	case contract.MetricDeviceMIGMode:
		k := gpuKey{s.Labels["instance"], s.Labels["uuid"]}
		st := b.migState[k]
		st[bool2int(s.Labels["state"] == "pending")] = s.Value == 1
		b.migState[k] = st
		b.gpu(s)
	case contract.MetricMIGInstanceInfo:
		in := b.instance(s)
		in.Profile, in.Resource = s.Labels["mig_profile"], s.Labels["resource"]
	case contract.MetricMIGInstanceHealthy:
		b.instance(s).Healthy = s.Value == 1
	case contract.MetricMIGInstanceMemoryUsed:
		b.instance(s).MemoryUsed = s.Value
	default:
		return false
	}
	return true
}

// add takes a sample of the device, slice and container metrics.
func (b *builder) add(s Sample) {
	switch s.Name {
	case contract.MetricDeviceInfo:
		b.gpu(s).Model = s.Labels["model"]
	case contract.MetricDeviceMemoryTotalBytes:
		b.gpu(s).MemoryTotal = s.Value
	case contract.MetricDeviceMemoryUsedBytes:
		b.gpu(s).MemoryUsed = s.Value
	case contract.MetricDeviceUtilizationRatio:
		b.gpu(s).Utilization = s.Value
	case contract.MetricDeviceHealthy:
		b.gpu(s).Healthy = s.Value == 1
	case contract.MetricSlicesCapacity:
		b.gpu(s).Slices = int(s.Value)
	case contract.MetricSlicesAllocated:
		b.gpu(s).Allocated = int(s.Value)
	case contract.MetricContainerSlices:
		b.ctr(s).Slices = int(s.Value)
	case contract.MetricContainerMemoryUsedBytes:
		b.ctr(s).MemoryUsed = s.Value
	case contract.MetricContainerMemoryLimitBytes:
		b.ctr(s).MemoryLimit = s.Value
	case contract.MetricContainerSMUtilization:
		b.ctr(s).Compute = s.Value
	case contract.MetricContainerComputeLimit:
		b.ctr(s).ComputeLimit = s.Value
	case contract.MetricContainerComputeUnmeasured:
		b.ctr(s).ComputeUnmeasured = s.Value == 1
	case contract.MetricContainerLastActive:
		if s.Value > 0 {
			b.ctr(s).LastActive = time.Unix(0, int64(s.Value*1e9))
		}
	}
}

// model ties containers to the GPUs and MIG instances they hold, and sorts.
func (b *builder) model() Model {
	for k, st := range b.migState {
		switch {
		case st[0]:
			b.gpus[k].MIG = "enabled"
		case st[1]:
			b.gpus[k].MIG = "pending"
		}
	}
	var m Model
	for _, c := range b.ctrs {
		m.Containers = append(m.Containers, *c)
		if g := b.gpus[gpuKey{c.Node, c.UUID}]; g != nil {
			g.Holders = append(g.Holders, *c)
		}
		if in := b.instances[migKey{c.Node, c.UUID}]; in != nil {
			in.Holders = append(in.Holders, *c)
		}
	}
	sort.Slice(m.Containers, func(i, j int) bool {
		a, b := m.Containers[i], m.Containers[j]
		return strings.Join([]string{a.Namespace, a.Pod, a.Container, a.Node, pad(a.GPU)}, "\x00") <
			strings.Join([]string{b.Namespace, b.Pod, b.Container, b.Node, pad(b.GPU)}, "\x00")
	})
	for _, g := range b.gpus {
		sort.Slice(g.Holders, func(i, j int) bool {
			return g.Holders[i].Namespace+"/"+g.Holders[i].Pod < g.Holders[j].Namespace+"/"+g.Holders[j].Pod
		})
		for i := range g.Instances {
			in := *b.instances[migKey{g.Node, g.Instances[i].UUID}]
			sort.Slice(in.Holders, func(i, j int) bool {
				return in.Holders[i].Namespace+"/"+in.Holders[i].Pod < in.Holders[j].Namespace+"/"+in.Holders[j].Pod
			})
			g.Instances[i] = in
		}
		sort.Slice(g.Instances, func(i, j int) bool {
			a, b := g.Instances[i], g.Instances[j]
			return a.Profile+"\x00"+a.UUID < b.Profile+"\x00"+b.UUID
		})
		m.GPUs = append(m.GPUs, *g)
	}
	sort.Slice(m.GPUs, func(i, j int) bool {
		if m.GPUs[i].Node != m.GPUs[j].Node {
			return m.GPUs[i].Node < m.GPUs[j].Node
		}
		return pad(m.GPUs[i].Index) < pad(m.GPUs[j].Index)
	})
	return m
}

func bool2int(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pad makes GPU indexes sort as numbers.
func pad(s string) string {
	if n, err := strconv.Atoi(s); err == nil {
		return fmt.Sprintf("%06d", n)
	}
	return s
}

// gib formats bytes as GiB.
func gib(b float64) string { return fmt.Sprintf("%.1fGi", b/(1<<30)) }

func pct(r float64) string { return fmt.Sprintf("%.0f%%", r*100) }

// compute is a container's compute use, or "unmeasured" where the agent
// cannot measure it: never a made-up 0%.
func compute(c Container) string {
	if c.ComputeUnmeasured {
		return "unmeasured"
	}
	return pct(c.Compute)
}

// idle says how long ago a container last used its GPU.
func idle(last, now time.Time) string {
	if last.IsZero() {
		return "never active"
	}
	d := max(now.Sub(last), 0)
	switch {
	case d < 2*time.Second:
		return "active"
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

// PodsIn returns the containers of namespace ("" for all).
func PodsIn(m Model, namespace string) []Container {
	out := []Container{}
	for _, c := range m.Containers {
		if namespace == "" || c.Namespace == namespace {
			out = append(out, c)
		}
	}
	return out
}

// Pods prints one line per container and GPU, for namespace ("" for all);
// wide adds each GPU's UUID and model.
func Pods(w io.Writer, m Model, namespace string, now time.Time, wide bool) error {
	models := map[gpuKey]string{}
	for _, g := range m.GPUs {
		models[gpuKey{g.Node, g.UUID}] = g.Model
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := "NAMESPACE\tPOD\tCONTAINER\tNODE\tGPU\tSLICES\tMEMORY(USED/LIMIT)\tCOMPUTE(USED/LIMIT)\tIDLE"
	if wide {
		header += "\tMODEL\tUUID"
	}
	fmt.Fprintln(tw, header)
	for _, c := range PodsIn(m, namespace) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s/%s\t%s/%s\t%s", c.Namespace, c.Pod, c.Container, c.Node, c.GPU, c.Slices,
			gib(c.MemoryUsed), gib(c.MemoryLimit), compute(c), pct(c.ComputeLimit), idle(c.LastActive, now))
		if wide {
			fmt.Fprintf(tw, "\t%s\t%s", models[gpuKey{c.Node, c.UUID}], c.UUID)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// Node is one node's GPUs, summed.
type Node struct {
	Name        string  `json:"name"`
	GPUs        int     `json:"gpus"`
	Unhealthy   int     `json:"unhealthy"`
	Slices      int     `json:"slices"`
	Allocated   int     `json:"allocated"`
	MemoryUsed  float64 `json:"memoryUsedBytes"`
	MemoryTotal float64 `json:"memoryTotalBytes"`
	// Utilization is the mean of its GPUs'.
	Utilization float64 `json:"utilizationRatio"`
	// Unreachable says why the node's figures are not shown; empty when
	// they are.
	Unreachable string `json:"unreachable,omitempty"`
}

// NodesOf sums the model's GPUs per node, sorted by name.
func NodesOf(m Model) []Node {
	byName := map[string]*Node{}
	var names []string
	for _, g := range m.GPUs {
		n := byName[g.Node]
		if n == nil {
			n = &Node{Name: g.Node}
			byName[g.Node] = n
			names = append(names, g.Node)
		}
		n.GPUs++
		n.Slices += g.Slices
		n.Allocated += g.Allocated
		n.MemoryUsed += g.MemoryUsed
		n.MemoryTotal += g.MemoryTotal
		n.Utilization += g.Utilization
		if !g.Healthy {
			n.Unhealthy++
		}
	}
	for _, u := range m.Unreachable {
		byName[u.Node] = &Node{Name: u.Node, Unreachable: u.Reason}
		names = append(names, u.Node)
	}
	sort.Strings(names)
	out := make([]Node, 0, len(names))
	for _, name := range names {
		n := byName[name]
		if n.GPUs > 0 {
			n.Utilization /= float64(n.GPUs)
		}
		out = append(out, *n)
	}
	return out
}

// Nodes prints one line per node.
func Nodes(w io.Writer, m Model) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tGPUS\tUNHEALTHY\tSLICES(ALLOCATED/TOTAL)\tMEMORY(USED/TOTAL)\tUTILIZATION")
	for _, n := range NodesOf(m) {
		if n.Unreachable != "" {
			fmt.Fprintf(tw, "%s\t?\t?\t?\t?\tunreachable: %s\n", n.Name, n.Unreachable)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d/%d\t%s/%s\t%s\n", n.Name, n.GPUs, n.Unhealthy, n.Allocated, n.Slices, gib(n.MemoryUsed), gib(n.MemoryTotal), pct(n.Utilization))
	}
	return tw.Flush()
}

// GPUs prints one line per GPU.
func GPUs(w io.Writer, m Model) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tGPU\tMODEL\tHEALTHY\tSLICES(ALLOCATED/TOTAL)\tMEMORY(USED/TOTAL)\tUTILIZATION\tUUID")
	for _, g := range m.GPUs {
		if g.MIG != "" {
			// Not cut into slices, and not read: its instances follow.
			fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t-\t-\t-\t%s\n", g.Node, g.Index, orDash(g.Model)+" (MIG "+g.MIG+")", g.Healthy, g.UUID)
			for _, in := range g.Instances {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t-\t-\t-\t%s\n", g.Node, g.Index, "  MIG "+in.Profile, in.Healthy, in.UUID)
			}
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%d/%d\t%s/%s\t%s\t%s\n", g.Node, g.Index, g.Model, g.Healthy, g.Allocated, g.Slices, gib(g.MemoryUsed), gib(g.MemoryTotal), pct(g.Utilization), g.UUID)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// describeMIG prints a GPU in MIG mode: its instances, the resource each
// is offered under, its health and who holds it.
func describeMIG(w io.Writer, g GPU) {
	fmt.Fprintf(w, "  MIG:          %s; not cut into slices; each instance read on its own\n", g.MIG)
	if len(g.Instances) == 0 {
		fmt.Fprintln(w, "  Instances:    none")
		return
	}
	fmt.Fprintln(w, "  Instances:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    PROFILE\tUUID\tRESOURCE\tHEALTHY\tMEMORY USED\tHELD BY (COMPUTE)")
	for _, in := range g.Instances {
		holders := make([]string, 0, len(in.Holders))
		for _, c := range in.Holders {
			holders = append(holders, c.Namespace+"/"+c.Pod+"/"+c.Container+" ("+compute(c)+")")
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%t\t%s\t%s\n", in.Profile, in.UUID, orDash(in.Resource), in.Healthy, gib(in.MemoryUsed), orDash(strings.Join(holders, ",")))
	}
	_ = tw.Flush()
}

// DescribeNode prints a node's GPUs and who holds their slices. It returns
// an error when the samples know no such node.
func DescribeNode(w io.Writer, m Model, node string, now time.Time) error {
	found := false
	for _, g := range m.GPUs {
		if g.Node != node {
			continue
		}
		found = true
		health := "healthy"
		if !g.Healthy {
			health = "UNHEALTHY"
		}
		fmt.Fprintf(w, "GPU %s  %s  %s  %s\n", g.Index, g.UUID, g.Model, health)
		if g.MIG != "" {
			describeMIG(w, g)
			continue
		}
		fmt.Fprintf(w, "  Slices:       %d of %d allocated\n", g.Allocated, g.Slices)
		fmt.Fprintf(w, "  Memory:       %s of %s used\n", gib(g.MemoryUsed), gib(g.MemoryTotal))
		fmt.Fprintf(w, "  Utilization:  %s\n", pct(g.Utilization))
		if len(g.Holders) == 0 {
			fmt.Fprintln(w, "  Held by:      nobody")
			continue
		}
		fmt.Fprintln(w, "  Held by:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "    NAMESPACE\tPOD\tCONTAINER\tSLICES\tMEMORY(USED/LIMIT)\tCOMPUTE(USED/LIMIT)\tIDLE")
		for _, c := range g.Holders {
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%d\t%s/%s\t%s/%s\t%s\n", c.Namespace, c.Pod, c.Container, c.Slices,
				gib(c.MemoryUsed), gib(c.MemoryLimit), pct(c.Compute), pct(c.ComputeLimit), idle(c.LastActive, now))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if !found {
		return fmt.Errorf("no gpuslice metrics for node %q", node)
	}
	return nil
}
