package host

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRuntimeStateReadsLargeRecordsAndCachesFailures: a record a tenant
// swelled through its pod spec (4.3 MB of escaped env) is read; a record
// that cannot be parsed is read once per failureTTL, not every Lookup.
func TestRuntimeStateReadsLargeRecordsAndCachesFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	big, bad := strings.Repeat("a", 64), strings.Repeat("b", 64)
	write := func(id, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, id), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, id, "config.json"), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ann := `"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main"}`
	write(big, `{"process":{"env":["PAD=`+strings.Repeat(`\u003c`, 720_000)+`"]},`+ann+`,"linux":{"cgroupsPath":"/kubepods/x"}}`)
	write(bad, `{"process":{"env":["PAD=`+strings.Repeat(`\u003c`, 1000)) // torn
	now := time.Unix(1000, 0)
	r := NewRuntimeState([]string{dir})
	r.now = func() time.Time { return now }
	if c, ok := r.Lookup(big); !ok || c.Name != "main" || c.CgroupsPath != "/kubepods/x" {
		t.Errorf("a 4.3 MB record: %+v, %v", c, ok)
	}
	if _, ok := r.Lookup(bad); ok || r.Failure(bad) == nil {
		t.Fatalf("a torn record was read, or its failure not kept: %v", r.Failure(bad))
	}
	// Fixed on disk (it never is: a bundle is written once), it is not read
	// again until the failure is a minute old.
	write(bad, `{`+ann+`}`)
	if _, ok := r.Lookup(bad); ok {
		t.Error("a record that failed was read again at once")
	}
	now = now.Add(failureTTL)
	if c, ok := r.Lookup(bad); !ok || c.Name != "main" || r.Failure(bad) != nil {
		t.Errorf("a record was not read again after failureTTL: %+v, %v, %v", c, ok, r.Failure(bad))
	}
}

// TestRuntimeStateFailuresAreBounded: containers that come and go with
// torn records leave only the failures of the last minute remembered.
func TestRuntimeStateFailuresAreBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Unix(1000, 0)
	r := NewRuntimeState([]string{dir})
	r.now = func() time.Time { return now }
	for i := range 1000 {
		id := fmt.Sprintf("%064x", i)
		if err := os.MkdirAll(filepath.Join(dir, id), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, id, "config.json"), []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, ok := r.Lookup(id); ok {
			t.Fatal("a torn record was read")
		}
		now = now.Add(time.Second)
	}
	if n := len(r.failed); n > 2*60+64 {
		t.Errorf("%d failures remembered after 1000 containers over 1000 s; want those of about the last minute", n)
	}
}

func BenchmarkLookupSwollenRecord(b *testing.B) {
	dir := b.TempDir()
	id := strings.Repeat("a", 64)
	if err := os.MkdirAll(filepath.Join(dir, id), 0o750); err != nil {
		b.Fatal(err)
	}
	data := `{"process":{"env":["PAD=` + strings.Repeat(`\u003c`, 720_000) + `"]},"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main"}}`
	if err := os.WriteFile(filepath.Join(dir, id, "config.json"), []byte(data), 0o600); err != nil {
		b.Fatal(err)
	}
	b.Run("first", func(b *testing.B) {
		for b.Loop() {
			if _, ok := NewRuntimeState([]string{dir}).Lookup(id); !ok {
				b.Fatal("not read")
			}
		}
	})
	b.Run("remembered", func(b *testing.B) {
		r := NewRuntimeState([]string{dir})
		for b.Loop() {
			if _, ok := r.Lookup(id); !ok {
				b.Fatal("not read")
			}
		}
	})
}
