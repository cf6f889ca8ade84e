package nodelock_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuslice/gpuslice/pkg/nodelock"
)

// TestLockOnAFreshNode: where the state directory does not exist yet (a
// node the daemon never ran on), the lock makes it, owner-only.
func TestLockOnAFreshNode(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "var", "lib", "gpuslice")
	unlock, err := nodelock.Lock(context.Background(), filepath.Join(dir, "enforcement.json.lock"), "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("state directory: %v, %v; want a 0700 directory", st, err)
	}
}

// TestStateDirRefuses: a state directory another user could plant or swap
// records in is refused, with the reason.
func TestStateDirRefuses(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct{ dir, want string }{
		"a symbolic link":       {link, "symbolic link"},
		"writable by everyone":  {open, "writable by everyone"},
		"a file, not directory": {file, "make state directory"},
	}
	if os.Geteuid() == 0 {
		foreign := filepath.Join(base, "foreign")
		if err := os.Mkdir(foreign, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(foreign, 1000, 1000); err != nil {
			t.Fatal(err)
		}
		cases["another user's"] = struct{ dir, want string }{foreign, "belongs to uid 1000"}
	}
	for name, tc := range cases {
		if err := nodelock.StateDir(tc.dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: StateDir = %v; want an error with %q", name, err, tc.want)
		}
	}
	if err := nodelock.StateDir(real); err != nil {
		t.Errorf("the real directory: %v", err)
	}
	// Nothing is followed or created through the refused ones.
	if _, err := os.Stat(filepath.Join(real, "enforcement.json.lock")); err == nil {
		t.Error("a lock file was made through the link")
	}
	if _, err := nodelock.Lock(context.Background(), filepath.Join(link, "x.lock"), "test", slog.New(slog.DiscardHandler)); err == nil {
		t.Error("Lock took a lock in a symlinked state directory")
	}
}
