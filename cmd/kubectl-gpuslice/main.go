// Command kubectl-gpuslice is a kubectl plugin showing GPU slice use:
//
//	kubectl gpuslice top pods [-n NS | -A]
//	kubectl gpuslice top nodes
//	kubectl gpuslice top gpus
//	kubectl gpuslice describe node NAME
//
// It reads gpuslice's metrics from Prometheus (--prometheus-url) or
// straight from agents' /metrics (--metrics-url, repeatable).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/gpuslice/gpuslice/pkg/gputop"
)

const usageText = `Usage:
  kubectl gpuslice top pods [-n NAMESPACE | -A]   slices, memory, compute and idle time per pod
  kubectl gpuslice top nodes                      slices and use per node
  kubectl gpuslice top gpus                       slices, use and health per GPU
  kubectl gpuslice describe node NAME             a node's GPUs and who holds their slices

Metrics come from --prometheus-url (or $GPUSLICE_PROMETHEUS_URL), or from
agents' /metrics with --metrics-url [NODE=]URL (repeatable).

Flags:
`

type urls []string

func (u *urls) String() string     { return strings.Join(*u, ",") }
func (u *urls) Set(v string) error { *u = append(*u, v); return nil }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kubectl-gpuslice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	prom := fs.String("prometheus-url", os.Getenv("GPUSLICE_PROMETHEUS_URL"), "Prometheus `URL` to query")
	var agents urls
	fs.Var(&agents, "metrics-url", "an agent's `[NODE=]URL`, e.g. node-1=http://10.0.0.5:9445/metrics (repeatable)")
	ns := fs.String("n", "", "only pods of this `namespace`")
	fs.StringVar(ns, "namespace", "", "only pods of this `namespace`")
	all := fs.Bool("A", false, "pods of every namespace (the default)")
	fs.BoolVar(all, "all-namespaces", false, "pods of every namespace (the default)")
	timeout := fs.Duration("request-timeout", 30*time.Second, "how long to wait for metrics")
	fs.Usage = func() { fmt.Fprint(stderr, usageText); fs.PrintDefaults() }

	// Flags may come before or after the words.
	var words []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		words = append(words, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	fail := func(err error) int { fmt.Fprintf(stderr, "kubectl-gpuslice: %v\n", err); return 1 }
	if *all {
		*ns = ""
	}

	var src gputop.Source
	switch {
	case *prom != "" && len(agents) > 0:
		fmt.Fprintln(stderr, "kubectl-gpuslice: --prometheus-url and --metrics-url are exclusive")
		return 2
	case *prom != "":
		p, err := gputop.NewPrometheus(*prom)
		if err != nil {
			return fail(err)
		}
		src = p
	case len(agents) > 0:
		src = gputop.Agents{Targets: agents}
	default:
		fmt.Fprintln(stderr, "kubectl-gpuslice: no metrics source: set --prometheus-url or --metrics-url")
		return 2
	}
	cmd := strings.Join(words, " ")
	var node string
	switch {
	case cmd == "top pods" || cmd == "top pod" || cmd == "top nodes" || cmd == "top node" || cmd == "top gpus" || cmd == "top gpu":
	case len(words) == 3 && words[0] == "describe" && (words[1] == "node" || words[1] == "nodes"):
		node = words[2]
	default:
		fmt.Fprintf(stderr, "kubectl-gpuslice: unknown command %q\n\n", cmd)
		fs.Usage()
		return 2
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	samples, err := src.Samples(ctx, gputop.Metrics)
	if err != nil {
		return fail(err)
	}
	m := gputop.Build(samples)
	now := time.Now()
	switch {
	case strings.HasPrefix(cmd, "top pod"):
		err = gputop.Pods(stdout, m, *ns, now)
	case strings.HasPrefix(cmd, "top node"):
		err = gputop.Nodes(stdout, m)
	case strings.HasPrefix(cmd, "top gpu"):
		err = gputop.GPUs(stdout, m)
	default:
		err = gputop.DescribeNode(stdout, m, node, now)
	}
	if err != nil {
		return fail(err)
	}
	return 0
}
