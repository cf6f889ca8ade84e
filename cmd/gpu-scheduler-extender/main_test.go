package main

import (
	"bytes"
	"strings"
	"testing"
)

// Bad flags: one clear line naming the flag, exit 2, nothing started.
func TestBadFlags(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"ttl":      {[]string{"--assume-ttl=0s"}, "--assume-ttl"},
		"address":  {[]string{"--listen-address=nope"}, "--listen-address"},
		"resource": {[]string{"--resource-name="}, "--resource-name"},
		"level":    {[]string{"--log-level=loud"}, "--log-level"},
		"recheck":  {[]string{"--recheck-after=-1s"}, "--recheck-after"},
		"argument": {[]string{"extra"}, "unexpected argument"},
	} {
		var stderr bytes.Buffer
		if code := run(tc.args, &stderr); code != 2 {
			t.Errorf("%s: exit %d, want 2", name, code)
		}
		out := strings.TrimSpace(stderr.String())
		if strings.Count(out, "\n") != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%s: stderr %q, want one line naming %s", name, out, tc.want)
		}
	}
}
