package arch

import (
	"flag"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gpuslice/gpuslice/internal/nodeconfig"
)

// shared are the flags both node binaries take, as nodeconfig declares
// them: the same name for the same file, socket or setting (the review
// found the prepared-claims record under --state in one and
// --dra-prepared-claims in the other), plus --health-address, which each
// binds to its own listener.
func shared() []string {
	c := nodeconfig.Default(func(string) string { return "" })
	fs := flag.NewFlagSet("shared", flag.ContinueOnError)
	nodeconfig.SharedFlags(fs, &c)
	names := []string{"health-address"}
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	return names
}

// ownDefaults are shared flags whose defaults differ on purpose: each
// binary's probes listen on a port of their own.
var ownDefaults = map[string]bool{"health-address": true}

var flagLine = regexp.MustCompile(`^  -([a-z0-9-]+)`)
var defaultOf = regexp.MustCompile(`\(default ([^)]*)\)\s*$`)

// usage is a binary's flags and their defaults, from its -h.
func usage(t *testing.T, pkg string) map[string]string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	build := exec.Command("go", "build", "-o", bin, "./"+pkg)
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	flags := map[string]string{}
	cur := ""
	for _, line := range strings.Split(string(out), "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			cur = m[1]
			flags[cur] = ""
			continue
		}
		if m := defaultOf.FindStringSubmatch(line); m != nil && cur != "" {
			flags[cur] = m[1]
		}
	}
	if len(flags) == 0 {
		t.Fatalf("%s -h listed no flags:\n%s", pkg, out)
	}
	return flags
}

// TestNodeBinariesShareOneFlagVocabulary: gpu-agent and gpu-dra-driver
// take the flags they share under one name, with one default.
func TestNodeBinariesShareOneFlagVocabulary(t *testing.T) {
	agent, driver := usage(t, "cmd/gpu-agent"), usage(t, "cmd/gpu-dra-driver")
	names := shared()
	if len(names) < 15 {
		t.Fatalf("nodeconfig declares %d shared flags: %v", len(names), names)
	}
	for _, f := range names {
		a, inAgent := agent[f]
		d, inDriver := driver[f]
		switch {
		case !inAgent || !inDriver:
			t.Errorf("--%s: in gpu-agent %t, in gpu-dra-driver %t; want both", f, inAgent, inDriver)
		case a != d && !ownDefaults[f]:
			t.Errorf("--%s: default %q in gpu-agent, %q in gpu-dra-driver", f, a, d)
		}
	}
}
