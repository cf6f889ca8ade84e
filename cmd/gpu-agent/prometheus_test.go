package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/test/promtest"
)

// startPrometheus runs Debian's Prometheus scraping target every second,
// as instance test-node, and returns its host:port.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	u, _ := promtest.Start(t, promtest.StaticTarget("gpuslice", target, "test-node"))
	return strings.TrimPrefix(u, "http://")
}

// promQuery runs an instant query and returns each result's value keyed
// by the given label.
func promQuery(t *testing.T, addr, query, by string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return nil // not up yet
	}
	defer func() { _ = resp.Body.Close() }()
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		return nil
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		v, err := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
		if err == nil {
			out[s.Metric[by]] = v
		}
	}
	return out
}

// waitQuery polls until the query returns every key in want within tol.
func waitQuery(t *testing.T, addr, query, by string, want map[string]float64, tol float64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got map[string]float64
	for time.Now().Before(deadline) {
		got = promQuery(t, addr, query, by)
		ok := len(got) == len(want)
		for k, v := range want {
			g, present := got[k]
			ok = ok && present && g >= v-tol && g <= v+tol
		}
		if ok {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("Prometheus query %s = %v, want %v ± %.2f", query, got, want, tol)
}
