package main

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	c, err := parse([]string{"--prometheus-url=http://p:9090", "--interval=10s"})
	if err != nil || c.promURL != "http://p:9090" || c.interval.Seconds() != 10 || !c.leaderElect || c.queryTimeout.Seconds() != 10 {
		t.Fatalf("parse = %+v, %v; want the query timeout clamped to the interval", c, err)
	}
	for args, want := range map[string]string{
		"":                                      "--prometheus-url is required",
		"--prometheus-url=x --interval=100ms":   "under 1s",
		"--prometheus-url=x --log-level=loud":   "--log-level",
		"--prometheus-url=x extra":              "unexpected arguments",
		"--prometheus-url=x --interval=forever": "invalid value",
		"--prometheus-url=x --interval=10s --query-timeout=11s": "at most --interval",
		"--prometheus-url=x --scrape-interval=0s":               "--scrape-interval",
	} {
		_, err := parse(strings.Fields(args))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parse(%q) = %v, want an error containing %q", args, err, want)
		}
	}
}
