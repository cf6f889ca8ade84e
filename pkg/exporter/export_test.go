package exporter

import (
	"net/http"
	"time"
)

// SetClock makes a KubeAuth handler read time from now.
func SetClock(h http.Handler, now func() time.Time) { h.(*kubeAuth).now = now }
