package enforce

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

func TestVictims(t *testing.T) {
	t.Parallel()
	const gib = 1 << 30
	procs := []nvml.Process{{PID: 10, MemoryBytes: 6 * gib}, {PID: 11, MemoryBytes: 4 * gib}, {PID: 12, MemoryBytes: 3 * gib}}
	started := map[int]uint64{10: 100, 11: 300, 12: 200} // 11 is newest, then 12
	start := func(pid int) uint64 { return started[pid] }
	pids := func(ps []nvml.Process) []int {
		var out []int
		for _, p := range ps {
			out = append(out, p.PID)
		}
		return out
	}
	tests := map[string]struct {
		limit uint64
		want  []int
	}{
		"within the limit":             {limit: 13 * gib, want: nil},
		"newest alone brings it under": {limit: 10 * gib, want: []int{11}},
		"two newest":                   {limit: 6 * gib, want: []int{11, 12}},
		"all, limit below the oldest":  {limit: 5 * gib, want: []int{11, 12, 10}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tc.want, pids(victims(procs, tc.limit, start))); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestStartTime(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write := func(pid, content string) {
		if err := os.MkdirAll(filepath.Join(root, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, pid, "stat"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A command name with spaces and parentheses must not shift the fields.
	write("42", "42 (evil) name (x)) S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 123456 1000 50 0\n")
	write("43", "43 (short\n")
	if got := startTime(root, 42); got != 123456 {
		t.Errorf("startTime = %d, want 123456", got)
	}
	if got := startTime(root, 43); got != 0 {
		t.Errorf("startTime of a truncated stat = %d, want 0", got)
	}
	if got := startTime(root, 44); got != 0 {
		t.Errorf("startTime of a missing pid = %d, want 0", got)
	}
	if got := startTime("/proc", os.Getpid()); got == 0 {
		t.Error("startTime of this process = 0")
	}
	for _, in := range []string{"", "kill", "log", "off"} {
		if _, err := ParseMemoryPolicy(in); err != nil {
			t.Errorf("ParseMemoryPolicy(%q) = %v", in, err)
		}
	}
	if _, err := ParseMemoryPolicy("oom"); err == nil {
		t.Error("ParseMemoryPolicy(oom) succeeded")
	}
}
