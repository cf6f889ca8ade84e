// Package cgrouptest decides what a test that needs real cgroups does on a
// host that lacks them or denies them: skip with the reason, or, with
// GPUSLICE_REQUIRE_CGROUPS set (as in CI), fail, so that a missing
// prerequisite never passes as a skip.
package cgrouptest

import (
	"fmt"
	"os"
	"testing"
)

// Require is the environment variable that turns the skips into failures.
const Require = "GPUSLICE_REQUIRE_CGROUPS"

// Skip skips tb with the reason, or fails it when Require is set.
func Skip(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(Require) != "" {
		tb.Fatalf("real cgroups are required (%s is set): %s", Require, msg)
	}
	tb.Skip(msg)
}
