package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/gpuslice/gpuslice/internal/nodeconfig"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/dra"
)

// Config is the driver's configuration: the node binaries' one
// configuration, by flags or by the file named with --config (the same
// file gpu-agent reads; the driver's own settings are under draDriver).
type Config = nodeconfig.Config

// flags binds every flag to a field of c: the ones both node binaries take
// (nodeconfig.SharedFlags) and the driver's own.
func flags(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("gpu-dra-driver", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	nodeconfig.SharedFlags(fs, c)
	d := &c.Driver
	fs.StringVar(&d.HealthAddress, "health-address", d.HealthAddress, "`host:port` serving /healthz and /readyz for the kubelet's probes, from before the node lock is taken; empty for none")
	fs.Float64Var(&d.KubeAPIQPS, "kube-api-qps", d.KubeAPIQPS, "API requests a second")
	fs.IntVar(&d.KubeAPIBurst, "kube-api-burst", d.KubeAPIBurst, "API requests in a burst")
	fs.StringVar(&d.RegistrarDir, "kubelet-registrar-dir", d.RegistrarDir, "`dir` where the kubelet discovers plugins")
	fs.StringVar(&d.PluginDir, "kubelet-plugin-dir", d.PluginDir, "`dir` of the driver's socket")
	fs.StringVar(&d.CDIDir, "cdi-dir", d.CDIDir, "`dir` the container runtime reads CDI specs from")
	fs.StringVar(&d.Taints.FatalEffect, "taint-effect-fatal", d.Taints.FatalEffect, "the `effect` of the taint on a GPU lost from the bus or with a fatal XID: NoExecute (the pods whose claims use it are evicted), NoSchedule or None")
	fs.StringVar(&d.Taints.RecoverableEffect, "taint-effect-recoverable", d.Taints.RecoverableEffect, "the `effect` of the taint on any other unhealthy GPU: NoSchedule (new claims avoid it; its pods run on), NoExecute or None")
	fs.Var((*nodeconfig.XIDList)(&d.Taints.FatalXIDs), "fatal-xids", "comma-separated XIDs after which a GPU is unusable until reset (its taint takes --taint-effect-fatal)")
	fs.Var((*nodeconfig.IntList)(&d.Sizes), "sized-devices", "comma-separated `sizes` in slices: besides each GPU, publish as many devices of each size as fit it, for DeviceClasses that map <resource>-<k>: 1 to k slices of one GPU")
	return fs
}

// loadConfig builds the configuration from args and getenv (NODE_NAME
// fills --node-name): the defaults, then the --config file, then the flags
// given explicitly. The first problem is the one error returned.
func loadConfig(args []string, getenv func(string) string) (Config, error) {
	c, err := nodeconfig.Load(args, getenv, flags)
	if err != nil {
		return Config{}, err
	}
	return c, validate(c)
}

// validate checks the shared settings, then the driver's own.
func validate(c Config) error {
	if err := c.Check(); err != nil {
		return err
	}
	d := c.Driver
	switch {
	case c.NodeName == "":
		return errors.New("--node-name (or NODE_NAME) is required: the node's pool is named after it")
	case d.KubeAPIQPS <= 0 || d.KubeAPIBurst < 1:
		return errors.New("--kube-api-qps and --kube-api-burst must be positive")
	}
	if _, err := taintPolicy(c); err != nil {
		return err
	}
	if err := nodeconfig.CheckSizes(d.Sizes); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(d.HealthAddress); d.HealthAddress != "" && err != nil {
		return fmt.Errorf("--health-address %q: %w", d.HealthAddress, err)
	}
	return nodeconfig.CheckPaths(
		nodeconfig.Path{Flag: "--kubelet-registrar-dir", Path: d.RegistrarDir},
		nodeconfig.Path{Flag: "--kubelet-plugin-dir", Path: d.PluginDir},
		nodeconfig.Path{Flag: "--cdi-dir", Path: d.CDIDir},
	)
}

// taintPolicy is the effect an unhealthy GPU's taint takes, by cause.
func taintPolicy(c Config) (dra.TaintPolicy, error) {
	t := c.Driver.Taints
	fatal, err := dra.ParseTaintEffect(t.FatalEffect)
	if err != nil {
		return dra.TaintPolicy{}, fmt.Errorf("--taint-effect-fatal: %w", err)
	}
	recoverable, err := dra.ParseTaintEffect(t.RecoverableEffect)
	if err != nil {
		return dra.TaintPolicy{}, fmt.Errorf("--taint-effect-recoverable: %w", err)
	}
	return dra.TaintPolicy{Fatal: fatal, Recoverable: recoverable, FatalXIDs: t.FatalXIDs}, nil
}

// usage is the flags' help text.
func usage() string {
	var b strings.Builder
	c := nodeconfig.Default(func(string) string { return "" })
	fs := flags(&c)
	fs.SetOutput(&b)
	b.WriteString("Usage: gpu-dra-driver [flags]\n\ngpuslice's DRA driver: it publishes the node's GPUs as shareable devices of " +
		contract.DRADriverName + "\nand prepares the claims the scheduler allocates. Run gpu-agent --dra beside it.\n\n")
	fs.PrintDefaults()
	return b.String()
}
