package frontend_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/frontend"
)

// One holder at a time, across guards (as across processes); grants count
// for PendingTTL; a record that cannot be read is an error, never "none".
func TestHoldGrantedPending(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	a := frontend.NewAt(dir, func() time.Time { return now })
	b := frontend.New(dir)
	release, err := a.Hold()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		r, err := b.Hold()
		if err == nil {
			r()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("a second holder took the lock while the first held it")
	case <-time.After(100 * time.Millisecond):
	}
	if err := a.Granted([]string{"GPU-a"}); err != nil {
		t.Fatal(err)
	}
	release()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the lock was not handed on when released")
	}
	if p, err := a.Pending(); err != nil || !p["GPU-a"] {
		t.Fatalf("Pending() = %v, %v just after the grant", p, err)
	}
	now = now.Add(frontend.PendingTTL + time.Second)
	if p, err := a.Pending(); err != nil || len(p) != 0 {
		t.Fatalf("Pending() = %v, %v past the TTL", p, err)
	}
	if err := os.WriteFile(filepath.Join(dir, frontend.PendingFile), []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Pending(); err == nil {
		t.Error("a torn record read as no grants")
	}
	if err := a.Granted([]string{"GPU-b"}); err != nil { // a new grant starts it anew
		t.Fatal(err)
	}
	if p, err := a.Pending(); err != nil || !p["GPU-b"] {
		t.Errorf("after a grant over a torn record: %v, %v", p, err)
	}
	link := t.TempDir()
	if err := os.Symlink(filepath.Join(dir, frontend.LockFile), filepath.Join(link, frontend.LockFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := frontend.New(link).Hold(); err == nil || errors.Is(err, frontend.ErrBusy) {
		t.Errorf("a lock file that is a symbolic link was followed: %v", err)
	}
}
