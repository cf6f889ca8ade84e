package main

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(nil, env(map[string]string{"NODE_NAME": "gpu-node-1"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GPUBackend != "nvml" || cfg.DevicePluginDir != "/var/lib/kubelet/device-plugins/" || cfg.MetricsAddress != ":9445" ||
		cfg.NodeName != "gpu-node-1" || cfg.ResourceName != "nvidia.com/vgpu" || cfg.Placement != "binpack" {
		t.Errorf("defaults = %+v", cfg)
	}
	s, err := cfg.SliceRules()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(vgpu.Config{Default: vgpu.Rule{SlicesPerGPU: 8}, Models: map[string]vgpu.Rule{}}, s); diff != "" {
		t.Errorf("default slicing (-want +got)\n%s", diff)
	}
}

// head starts every config file.
const head = "apiVersion: gpuslice.io/v1alpha1\nkind: NodeConfig\n"

func TestLoadConfigFileAndFlagPrecedence(t *testing.T) {
	t.Parallel()
	// AgentConfig, the format's earlier kind, still reads.
	file := writeFile(t, "agent.yaml", `
apiVersion: gpuslice.io/v1alpha1
kind: AgentConfig
gpuBackend: fake
devicePluginDir: /tmp/dp
nodeName: from-file
placement: spread
slicing:
  sliceMemory: 10Gi
  models:
    "NVIDIA H100 80GB HBM3": {slicesPerGPU: 7}
cdi: {enabled: true, nameStrategy: index}
mps: {enabled: true}
health: {probeInterval: 2s, xidRecovery: 0s, ignoredXIDs: [13]}
log: {level: debug, format: json}
`)
	tests := map[string]struct {
		args  []string
		check func(t *testing.T, c Config)
	}{
		"file only": {
			args: []string{"--config", file},
			check: func(t *testing.T, c Config) {
				s, _ := c.SliceRules()
				want := vgpu.Config{Default: vgpu.Rule{SliceMemoryBytes: 10 << 30}, Models: map[string]vgpu.Rule{"NVIDIA H100 80GB HBM3": {SlicesPerGPU: 7}}}
				if diff := cmp.Diff(want, s); diff != "" {
					t.Errorf("slicing (-want +got)\n%s", diff)
				}
				if c.GPUBackend != "fake" || c.NodeName != "from-file" || c.Placement != "spread" || !c.CDI.Enabled || c.CDI.NameStrategy != "index" ||
					!c.MPS.Enabled || c.MPS.PipeDirectory != "/run/nvidia/mps" || c.Health.ProbeInterval.Duration != 2*time.Second ||
					c.Health.XIDRecovery.Duration != 0 || c.Log.Format != "json" || c.DeviceSpecs.DevRoot != "/dev" {
					t.Errorf("config = %+v", c)
				}
			},
		},
		"explicit flags win, flag order does not matter": {
			args: []string{"--placement=binpack", "--config", file, "--node-name", "from-flag", "--cdi=false"},
			check: func(t *testing.T, c Config) {
				if c.Placement != "binpack" || c.NodeName != "from-flag" || c.CDI.Enabled || c.GPUBackend != "fake" {
					t.Errorf("config = %+v", c)
				}
			},
		},
		"slicing flag replaces the file's slicing mode": {
			args: []string{"--config", file, "--slices-per-gpu", "4"},
			check: func(t *testing.T, c Config) {
				s, err := c.SliceRules()
				if err != nil || s.Default != (vgpu.Rule{SlicesPerGPU: 4}) {
					t.Errorf("slicing = %+v, %v", s, err)
				}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, err := loadConfig(tc.args, env(nil))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c.Config)
		})
	}
}

func TestLoadConfigErrors(t *testing.T) {
	t.Parallel()
	badFake := writeFile(t, "fake.yaml", "preset: V100\ncount: 1\n")
	tests := map[string]struct {
		args []string
		file string
		want string
	}{
		"unknown flag":            {args: []string{"--gpus=4"}, want: "flag provided but not defined: -gpus"},
		"stray argument":          {args: []string{"extra"}, want: `unexpected argument "extra"`},
		"bad backend":             {args: []string{"--gpu-backend=cuda"}, want: `--gpu-backend "cuda"`},
		"fake config with nvml":   {args: []string{"--fake-config=/x.yaml"}, want: "--fake-config needs --gpu-backend=fake"},
		"bad fake config":         {args: []string{"--gpu-backend=fake", "--fake-config=" + badFake}, want: `unknown preset "V100"`},
		"missing fake config":     {args: []string{"--gpu-backend=fake", "--fake-config=/nonexistent.yaml"}, want: "no such file"},
		"bad metrics address":     {args: []string{"--metrics-address=9445"}, want: "--metrics-address"},
		"both slicing flags":      {args: []string{"--slices-per-gpu=4", "--slice-memory=1Gi"}, want: "not both"},
		"bad slice memory":        {args: []string{"--slice-memory=lots"}, want: "positive size"},
		"too many slices":         {args: []string{"--slices-per-gpu=1000"}, want: "outside 1..256"},
		"negative slices":         {args: []string{"--slices-per-gpu=-2"}, want: "outside 1..256"},
		"bad placement":           {args: []string{"--placement=random"}, want: "placement"},
		"bad resource":            {args: []string{"--resource-name=vgpu"}, want: "<domain>/<name>"},
		"relative plugin dir":     {args: []string{"--device-plugin-dir=dp"}, want: "absolute"},
		"bad log level":           {args: []string{"--log-level=loud"}, want: "--log-level"},
		"bad log format":          {args: []string{"--log-format=xml"}, want: "--log-format"},
		"zero probe interval":     {args: []string{"--health-probe-interval=0s"}, want: "must be positive"},
		"negative xid recovery":   {args: []string{"--xid-recovery=-1s"}, want: "must not be negative"},
		"relative nvml library":   {args: []string{"--nvml-library=libnvidia-ml.so.1"}, want: "absolute path"},
		"unknown metrics auth":    {args: []string{"--metrics-auth=basic"}, want: "want none or kubernetes"},
		"relative proc root":      {args: []string{"--proc-root=proc"}, want: "--proc-root"},
		"empty cgroup root":       {args: []string{"--cgroup-root="}, want: "--cgroup-root"},
		"relative kubeconfig":     {args: []string{"--kubeconfig=kube.yaml"}, want: "--kubeconfig"},
		"relative pod resources":  {args: []string{"--pod-resources-socket=kubelet.sock"}, want: "--pod-resources-socket"},
		"relative sysfs":          {args: []string{"--sysfs-root=sys"}, want: "--sysfs-root"},
		"missing config file":     {args: []string{"--config=/nonexistent.yaml"}, want: "read config"},
		"unknown config key":      {file: head + "gpuBackend: fake\nslicesPerGpu: 4\n", want: "unknown field"},
		"bad duration in file":    {file: head + "health: {probeInterval: 5}\n", want: "duration must be a string"},
		"bad model rule in file":  {file: head + "slicing: {models: {X: {}}}\n", want: `model "X"`},
		"bad MIG profile name":    {file: head + "slicing: {migProfiles: {3g: {slicesPerGPU: 2}}}\n", want: `"3g" is not a MIG profile name`},
		"bad MIG profile rule":    {file: head + "slicing: {migProfiles: {3g.40gb: {}}}\n", want: `MIG profile "3g.40gb"`},
		"no apiVersion":           {file: "gpuBackend: fake\n", want: "want apiVersion: gpuslice.io/v1alpha1 and kind: NodeConfig"},
		"a later apiVersion":      {file: "apiVersion: gpuslice.io/v2\nkind: AgentConfig\n", want: `apiVersion "gpuslice.io/v2"`},
		"wrong kind":              {file: "apiVersion: gpuslice.io/v1alpha1\nkind: Node\n", want: `kind "Node"`},
		"vgpu to DRA without DRA": {args: []string{"--dra-extended-resource"}, want: "--dra-extended-resource needs --dra"},
		"unknown enforcement":     {args: []string{"--enforcement=strict"}, want: `--enforcement "strict": want best-effort or required`},
		"required, compute off":   {args: []string{"--enforcement=required", "--enforce-compute=false"}, want: "--enforcement=required needs the compute tier"},
		"required, memory logged": {args: []string{"--enforcement=required", "--memory-policy=log"}, want: "--enforcement=required needs --memory-policy=kill"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := tc.args
			if tc.file != "" {
				args = append(args, "--config", writeFile(t, "c.yaml", tc.file))
			}
			_, err := loadConfig(args, env(nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("loadConfig(%v) = %v, want error mentioning %q", args, err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	if _, err := loadConfig([]string{"--help"}, env(nil)); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help = %v", err)
	}
	u := usage()
	// The design's flag contract.
	for _, f := range []string{"-config", "-gpu-backend", "-fake-config", "-device-plugin-dir", "-pod-resources-socket",
		"-metrics-address", "-cgroup-root", "-proc-root", "-node-name", "-kubeconfig"} {
		if !strings.Contains(u, f) {
			t.Errorf("usage lacks %s", f)
		}
	}
}

func FuzzConfigFile(f *testing.F) {
	f.Add(head + "gpuBackend: fake\nslicing: {sliceMemory: 10Gi}\n")
	f.Add(head + "health: {probeInterval: 1s}\nlog: {level: debug}\n")
	f.Add(head + "slicing: {models: {A: {slicesPerGPU: 3}}}\n")
	f.Fuzz(func(t *testing.T, content string) {
		dir := t.TempDir()
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := loadConfig([]string{"--config", p}, env(nil))
		if err != nil {
			return
		}
		// Whatever loads must be usable: slicing and plugin options valid.
		if _, err := cfg.SliceRules(); err != nil {
			t.Fatalf("accepted config has bad slicing: %v", err)
		}
		if err := cfg.Plugin.Validate(); err != nil {
			t.Fatalf("accepted config has bad plugin options: %v", err)
		}
	})
}

func TestMPSLeavesComputeToMPS(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig([]string{"--mps"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Enforce.MPS {
		t.Error("with MPS the throttle would fight the MPS limits set at Allocate")
	}
	cfg, _ = loadConfig(nil, env(nil))
	if o := cfg.Enforce; !o.Compute || o.MPS || o.Memory != "kill" {
		t.Errorf("default enforcement = %+v, want the throttle on and memory policy kill", o)
	}
	if _, err := loadConfig([]string{"--memory-policy=oom"}, env(nil)); err == nil {
		t.Error("--memory-policy=oom accepted")
	}
	if _, err := loadConfig([]string{"--compute-policy=fair"}, env(nil)); err == nil {
		t.Error("--compute-policy=fair accepted")
	}
	for _, bad := range []string{"--throttle-min-run=-1ms", "--throttle-min-run=2s1ms", "--mig-min-turn=-1ms", "--mig-min-turn=2s1ms"} {
		if _, err := loadConfig([]string{bad}, env(nil)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if c, err := loadConfig([]string{"--throttle-min-run=0"}, env(nil)); err != nil || c.Enforce.MinRun != 0 {
		t.Errorf("--throttle-min-run=0: %v, %v", c.Enforce.MinRun, err)
	}
	if c, err := loadConfig([]string{"--mig-min-turn=400ms"}, env(nil)); err != nil || c.Enforce.MinTurn != 400*time.Millisecond {
		t.Errorf("--mig-min-turn=400ms: %v, %v", c.Enforce.MinTurn, err)
	}
	if c, err := loadConfig(nil, env(nil)); err != nil || c.Enforce.MinTurn != 200*time.Millisecond {
		t.Errorf("default turn %v, want 200ms (%v)", c.Enforce.MinTurn, err)
	}
	if _, err := loadConfig([]string{"--throttle-period=1ms"}, env(nil)); err == nil {
		t.Error("--throttle-period=1ms accepted")
	}
}

// TestDaemonSetArgsAreValid keeps deployments/daemonset.yaml in step with
// the agent's flags: the args it passes must parse and validate.
func TestDaemonSetArgsAreValid(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deployments/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var ds struct {
			Kind string `json:"kind"`
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Args []string `json:"args"`
						} `json:"containers"`
					} `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &ds); err != nil {
			t.Fatal(err)
		}
		if ds.Kind == "DaemonSet" {
			args = ds.Spec.Template.Spec.Containers[0].Args
		}
	}
	if len(args) == 0 {
		t.Fatal("no DaemonSet args found")
	}
	if _, err := loadConfig(args, env(map[string]string{"NODE_NAME": "n"})); err != nil {
		t.Errorf("the DaemonSet's args %v do not validate: %v", args, err)
	}
}

// The example file in docs/configuration.md loads as written.
func TestDocumentedExampleLoads(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "## Example file")
	if !ok {
		t.Fatal("docs/configuration.md has no example file section")
	}
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	example, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("the example has no yaml block")
	}
	if _, err := loadConfig([]string{"--config", writeFile(t, "example.yaml", example)}, env(nil)); err != nil {
		t.Errorf("the documented example does not load: %v", err)
	}
}
