// Package health serves a binary's liveness (/healthz) and readiness
// (/readyz) on a listener of their own, apart from /metrics, so that the
// kubelet's probes are answered whatever the clients of the metrics port
// do. The server is up before the binary waits on anything (the node lock,
// the API server), so a successor waiting for its predecessor is alive
// and says what it waits for.
package health
