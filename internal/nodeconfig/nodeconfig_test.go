package nodeconfig

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// shared binds only the shared flags, as a binary with none of its own.
func shared(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	SharedFlags(fs, c)
	return fs
}

func noEnv(string) string { return "" }

func TestIgnoredXIDsFlag(t *testing.T) {
	t.Parallel()
	c, err := Load([]string{"--ignored-xids=13, 43"}, noEnv, shared)
	if err != nil || !reflect.DeepEqual(c.Health.IgnoredXIDs, []uint64{13, 43}) {
		t.Errorf("--ignored-xids=13, 43: %v, %v", c.Health.IgnoredXIDs, err)
	}
	if c, err := Load(nil, noEnv, shared); err != nil || len(c.Health.IgnoredXIDs) != 6 {
		t.Errorf("default ignored XIDs %v, %v; want the built-in six", c.Health.IgnoredXIDs, err)
	}
	if _, err := Load([]string{"--ignored-xids=13,x"}, noEnv, shared); err == nil || !strings.Contains(err.Error(), `XID "x"`) {
		t.Errorf("--ignored-xids=13,x: %v", err)
	}
}

// TestKinds: NodeConfig and its earlier name AgentConfig read; anything
// else is one error naming what is wanted.
func TestKinds(t *testing.T) {
	t.Parallel()
	for kind, ok := range map[string]bool{"NodeConfig": true, "AgentConfig": true, "DriverConfig": false, "": false} {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte("apiVersion: gpuslice.io/v1alpha1\nkind: "+kind+"\nslicing: {slicesPerGPU: 3}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load([]string{"--config", p}, noEnv, shared)
		switch {
		case ok && (err != nil || c.Slicing.SlicesPerGPU != 3):
			t.Errorf("kind %q: %+v, %v", kind, c.Slicing, err)
		case !ok && (err == nil || !strings.Contains(err.Error(), "kind: NodeConfig")):
			t.Errorf("kind %q read: %v", kind, err)
		}
	}
}

// TestCheckNamesTheSetting: each shared setting that cannot work is one
// error naming its flag.
func TestCheckNamesTheSetting(t *testing.T) {
	t.Parallel()
	for args, want := range map[string]string{
		"--slice-memory=lots":      "--slice-memory",
		"--dev-root=dev":           "--dev-root",
		"--dra-prepared-claims=p":  "--dra-prepared-claims",
		"--xid-recovery=-1s":       "--xid-recovery",
		"--log-format=xml":         "--log-format",
		"--fake-config=/x.yaml":    "--fake-config needs --gpu-backend=fake",
		"--slices-per-gpu=0":       "",
		"--sysfs-root=sys":         "--sysfs-root",
		"--pod-resources-socket=s": "--pod-resources-socket",
	} {
		c, err := Load(strings.Fields(args), noEnv, shared)
		if err != nil {
			t.Fatalf("%s: %v", args, err)
		}
		err = c.Check()
		if want == "" {
			if err != nil {
				t.Errorf("%s: %v; want the default count", args, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v; want one line naming %s", args, err, want)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add("apiVersion: gpuslice.io/v1alpha1\nkind: NodeConfig\nslicing: {models: {A: {sliceMemory: 1Gi}}}\n")
	f.Add("apiVersion: gpuslice.io/v1alpha1\nkind: NodeConfig\nhealth: {ignoredXIDs: [1]}\ndraDriver: {kubeAPIQPS: 1}\n")
	f.Fuzz(func(t *testing.T, content string) {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load([]string{"--config", p}, noEnv, shared)
		if err != nil || c.Check() != nil {
			return
		}
		// What passes Check cuts GPUs and logs.
		if _, err := c.SliceRules(); err != nil {
			t.Fatalf("checked config has bad slicing: %v", err)
		}
		if _, err := c.LogLevel(); err != nil {
			t.Fatalf("checked config has a bad level: %v", err)
		}
	})
}
