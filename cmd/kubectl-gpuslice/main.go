// Command kubectl-gpuslice is a kubectl plugin showing GPU slice use:
//
//	kubectl gpuslice top pods [-n NS | -A] [-o wide|json|yaml]
//	kubectl gpuslice top nodes
//	kubectl gpuslice top gpus
//	kubectl gpuslice describe node NAME
//	kubectl gpuslice completion bash|zsh|fish|powershell
//
// With a kubeconfig alone it finds the agents' pods and reads their
// /metrics through the API server's proxy; --prometheus-service reads a
// Prometheus Service the same way, --prometheus-url a Prometheus, and
// --metrics-url agents' endpoints directly. kubectl's own flags
// (--kubeconfig, --context, -n, ...) come from k8s.io/cli-runtime.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/gputop"
)

// completeName is the name kubectl (1.26+) runs to complete a plugin's
// arguments; installed as a link to this binary, it answers cobra's
// completion requests.
const completeName = "kubectl_complete-gpuslice"

// usageError is a mistake on the command line: exit status 2.
type usageError struct{ error }

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

func run(argv []string, stdout, stderr io.Writer) int {
	args := argv[1:]
	if filepath.Base(argv[0]) == completeName {
		args = append([]string{cobra.ShellCompRequestCmd}, args...)
	}
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintf(stderr, "kubectl-gpuslice: %v\n", err)
		var ue usageError
		// cobra's own error for a word that names no command has no type.
		if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
			return 2
		}
		return 1
	}
	return 0
}

// options are the plugin's flags.
type options struct {
	kube              *genericclioptions.ConfigFlags
	prometheusURL     string
	prometheusService string
	metricsURLs       []string
	agentSelector     string
	agentNamespace    string
	allNamespaces     bool
	output            string
	stdout, stderr    io.Writer
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	o := &options{kube: genericclioptions.NewConfigFlags(true), stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:         "kubectl-gpuslice",
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl gpuslice"},
		Short:       "GPU slice use per pod, node and GPU, from gpuslice's metrics",
		Long: `GPU slice use per pod, node and GPU, from gpuslice's metrics.

Metrics come, in this order, from --prometheus-url (or $GPUSLICE_PROMETHEUS_URL),
--metrics-url [NODE=]URL (repeatable), --prometheus-service NAMESPACE/NAME[:PORT]
through the API server's proxy, or else from every agent pod (selected by
--agent-selector) through the API server's proxy: a kubeconfig is enough. That
needs list pods and get pods/proxy (services/proxy for a Prometheus Service).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	o.kube.AddFlags(root.PersistentFlags())
	pf := root.PersistentFlags()
	pf.StringVar(&o.prometheusURL, "prometheus-url", os.Getenv(contract.EnvPrometheusURL), "Prometheus `URL` to query")
	pf.StringArrayVar(&o.metricsURLs, "metrics-url", nil, "an agent's `[NODE=]URL`, e.g. node-1=http://10.0.0.5:9445/metrics (repeatable)")
	pf.StringVar(&o.prometheusService, "prometheus-service", "", "a Prometheus Service, `NAMESPACE/NAME[:PORT]`, read through the API server's proxy")
	pf.StringVar(&o.agentSelector, "agent-selector", gputop.AgentSelector, "label `selector` of the agent pods")
	pf.StringVar(&o.agentNamespace, "agent-namespace", gputop.AgentNamespace, "`namespace` of the agent pods, the chart's release namespace; empty for every namespace (a tenant's DaemonSet wearing the agents' labels is then a candidate too)")
	pf.StringVarP(&o.output, "output", "o", "", "output format: wide, json or yaml")
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"wide", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))

	top := &cobra.Command{Use: "top", Short: "Use per pod, node or GPU"}
	pods := &cobra.Command{
		Use: "pods", Aliases: []string{"pod"}, Short: "Slices, memory, compute and idle time per pod's container and GPU", Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return o.show(cmd.Context(), "pods", "") },
	}
	pods.Flags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "pods of every namespace")
	top.AddCommand(pods,
		&cobra.Command{
			Use: "nodes", Aliases: []string{"node"}, Short: "Slices and use per node", Args: usageArgs(cobra.NoArgs),
			RunE: func(cmd *cobra.Command, _ []string) error { return o.show(cmd.Context(), "nodes", "") },
		},
		&cobra.Command{
			Use: "gpus", Aliases: []string{"gpu"}, Short: "Slices, use and health per GPU", Args: usageArgs(cobra.NoArgs),
			RunE: func(cmd *cobra.Command, _ []string) error { return o.show(cmd.Context(), "gpus", "") },
		})
	describe := &cobra.Command{Use: "describe", Short: "Who holds what"}
	describe.AddCommand(&cobra.Command{
		Use: "node NAME", Aliases: []string{"nodes"}, Short: "A node's GPUs and who holds their slices", Args: usageArgs(cobra.ExactArgs(1)),
		ValidArgsFunction: o.completeNodes,
		RunE:              func(cmd *cobra.Command, args []string) error { return o.show(cmd.Context(), "node", args[0]) },
	})
	root.AddCommand(top, describe)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	return root
}

// usageArgs makes an argument check's error a usage error (exit 2).
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// timeout is --request-timeout, or 30 s when it is unset or zero.
func (o *options) timeout() (time.Duration, error) {
	if o.kube.Timeout == nil || *o.kube.Timeout == "" || *o.kube.Timeout == "0" {
		return 30 * time.Second, nil
	}
	d, err := time.ParseDuration(*o.kube.Timeout)
	if err != nil {
		return 0, usageError{fmt.Errorf("--request-timeout %q: %w", *o.kube.Timeout, err)}
	}
	return d, nil
}

// source picks where metrics come from.
func (o *options) source(ctx context.Context) (gputop.Source, error) {
	switch {
	case o.prometheusURL != "" && len(o.metricsURLs) > 0:
		return nil, usageError{errors.New("--prometheus-url and --metrics-url are exclusive")}
	case o.prometheusURL != "":
		return gputop.NewPrometheus(o.prometheusURL, nil)
	case len(o.metricsURLs) > 0:
		return gputop.Agents{Targets: o.metricsURLs}, nil
	}
	cfg, err := o.kube.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("no metrics source: no --prometheus-url or --metrics-url, and no cluster: %w", err)
	}
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	if o.prometheusService != "" {
		addr, err := gputop.ServiceProxy(cfg.Host, o.prometheusService)
		if err != nil {
			return nil, usageError{err}
		}
		return gputop.NewPrometheus(addr, client.Transport)
	}
	cs, err := kubernetes.NewForConfigAndClient(cfg, client)
	if err != nil {
		return nil, err
	}
	list, err := cs.CoreV1().Pods(o.agentNamespace).List(ctx, metav1.ListOptions{LabelSelector: o.agentSelector})
	if err != nil {
		return nil, fmt.Errorf("find the agents (pods %s): %w", o.agentSelector, err)
	}
	targets, skipped, err := gputop.AgentTargets(list.Items, o.agentNamespace, cfg.Host)
	if err != nil {
		return nil, usageError{fmt.Errorf("%w (--agent-namespace)", err)}
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("no running gpuslice agent pods (selector %s; not running: %v); use --prometheus-url or --prometheus-service", o.agentSelector, skipped)
	}
	return gputop.Agents{Targets: targets, Client: &http.Client{Transport: client.Transport}}, nil
}

// show reads the metrics and prints what (pods, nodes, gpus, or node
// for describe node NAME).
func (o *options) show(ctx context.Context, what, node string) error {
	switch o.output {
	case "", "wide", "json", "yaml":
	default:
		return usageError{fmt.Errorf("--output %q: want wide, json or yaml", o.output)}
	}
	timeout, err := o.timeout()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m, err := o.read(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	namespace := ""
	if what == "pods" && !o.allNamespaces {
		if namespace, _, err = o.kube.ToRawKubeConfigLoader().Namespace(); err != nil {
			return err
		}
	}
	var items any
	switch what {
	case "pods":
		items = gputop.PodsIn(m, namespace)
	case "nodes":
		items = gputop.NodesOf(m)
	case "gpus":
		items = m.GPUs
	default:
		var gpus []gputop.GPU
		for _, g := range m.GPUs {
			if g.Node == node {
				gpus = append(gpus, g)
			}
		}
		if len(gpus) == 0 {
			for _, u := range m.Unreachable {
				if u.Node == node {
					return fmt.Errorf("node %q is unreachable: %s", node, u.Reason)
				}
			}
			return fmt.Errorf("no gpuslice metrics for node %q", node)
		}
		items = gpus
	}
	switch o.output {
	case "json":
		enc := json.NewEncoder(o.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"items": items})
	case "yaml":
		out, err := yaml.Marshal(map[string]any{"items": items})
		if err != nil {
			return err
		}
		_, err = o.stdout.Write(out)
		return err
	}
	switch what {
	case "pods":
		return gputop.Pods(o.stdout, m, namespace, now, o.output == "wide")
	case "nodes":
		return gputop.Nodes(o.stdout, m)
	case "gpus":
		return gputop.GPUs(o.stdout, m)
	default:
		return gputop.DescribeNode(o.stdout, m, node, now)
	}
}

// read builds the model from the metrics source, naming on stderr the
// nodes whose agents could not be read or are stale: never silent, never
// old figures.
func (o *options) read(ctx context.Context) (gputop.Model, error) {
	src, err := o.source(ctx)
	if err != nil {
		return gputop.Model{}, err
	}
	samples, err := src.Samples(ctx, gputop.Metrics)
	var partial *gputop.UnreachableError
	unreachable := map[string]string{}
	switch {
	case errors.As(err, &partial):
		unreachable = partial.Nodes
	case err != nil:
		return gputop.Model{}, err
	}
	m := gputop.BuildAt(samples, unreachable, gputop.MaxSampleAge)
	for _, u := range m.Unreachable {
		fmt.Fprintf(o.stderr, "warning: node %s is unreachable, its GPUs and pods are not shown: %s\n", u.Node, u.Reason)
	}
	return m, nil
}

// completeNodes offers the cluster's node names for describe node.
func (o *options) completeNodes(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cfg, err := o.kube.ToRESTConfig()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
	defer cancel()
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, n := range nodes.Items {
		if strings.HasPrefix(n.Name, toComplete) {
			names = append(names, n.Name)
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}
