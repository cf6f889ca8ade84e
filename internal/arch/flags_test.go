package arch

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// shared are the flags both node binaries take: the same name for the
// same file, socket or setting (the review found the prepared-claims
// record under --state in one and --dra-prepared-claims in the other).
var shared = []string{
	"gpu-backend", "fake-config", "nvml-library", "node-name", "kubeconfig",
	"slices-per-gpu", "slice-memory", "dev-root", "pod-resources-socket", "resource-name",
	"dra-prepared-claims", "health-probe-interval", "xid-recovery", "health-address", "log-level", "log-format",
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
	for _, f := range shared {
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
