package scale

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestWriteSeriesHasNoDuplicates: every series of a node's history is
// written once (a histogram's +Inf bucket was written twice, which the
// block writer refuses when the two land in different commits), and the
// families the controller reads carry the whole history.
func TestWriteSeriesHasNoDuplicates(t *testing.T) {
	var b bytes.Buffer
	if err := WriteSeries(&b, 7, time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	full := 0
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		rest := l
		if strings.HasPrefix(l, "@") {
			_, rest, _ = strings.Cut(l, " ")
		} else {
			full++
		}
		f := strings.SplitN(rest, " ", 3)
		if seen[f[2]] {
			t.Errorf("series written twice: %s", f[2])
		}
		seen[f[2]] = true
	}
	if full != 5*PodsPerNode+GPUsPerNode+1 {
		t.Errorf("%d series with the whole history; want 5 per container, the GPUs' blind and up", full)
	}
}
