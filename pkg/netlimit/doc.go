// Package netlimit bounds the connections a TCP listener holds, in all and
// per remote address, so that one client (a tenant's pod opening idle
// keep-alive connections) cannot take the room every other client needs.
// It is the only place the agent's HTTP listeners decide who may connect.
package netlimit
