package kube

import (
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKubeconfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := base64.StdEncoding.EncodeToString([]byte("not a certificate"))
	tests := map[string]struct {
		config  string
		check   func(t *testing.T, c *Client)
		wantErr string
	}{
		"token and insecure": {
			config: `current-context: a
contexts: [{name: a, context: {cluster: c, user: u}}]
clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443/", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: abc}}]`,
			check: func(t *testing.T, c *Client) {
				if c.server != "https://10.0.0.1:6443" || c.token != "abc" {
					t.Errorf("client = %+v", c)
				}
			},
		},
		"relative token file": {
			config: `current-context: a
contexts: [{name: a, context: {cluster: c, user: u}}]
clusters: [{name: c, cluster: {server: "https://h"}}]
users: [{name: u, user: {tokenFile: token}}]`,
			check: func(t *testing.T, c *Client) {
				if c.tokenFile != filepath.Join(dir, "token") {
					t.Errorf("token file = %q", c.tokenFile)
				}
			},
		},
		"exec plugin refused": {
			config: `current-context: a
contexts: [{name: a, context: {cluster: c, user: u}}]
clusters: [{name: c, cluster: {server: "https://h"}}]
users: [{name: u, user: {exec: {command: aws}}}]`,
			wantErr: "exec or auth-provider plugin",
		},
		"no such context": {
			config: `current-context: b
contexts: [{name: a, context: {cluster: c, user: u}}]`,
			wantErr: `current-context "b" not found`,
		},
		"no server": {
			config: `current-context: a
contexts: [{name: a, context: {cluster: c, user: u}}]
clusters: [{name: other, cluster: {server: "https://h"}}]`,
			wantErr: `cluster "c" not found`,
		},
		"bad ca": {
			config: `current-context: a
contexts: [{name: a, context: {cluster: c, user: u}}]
clusters: [{name: c, cluster: {server: "https://h", certificate-authority-data: ` + ca + `}}]`,
			wantErr: "no PEM certificate",
		},
		"not yaml": {config: "current-context: [", wantErr: "kubeconfig"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".yaml")
			if err := os.WriteFile(p, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := New(p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("New() = %v, want an error mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
	if _, err := New(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("a missing kubeconfig was accepted")
	}
}

func TestNoCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := New(""); !errors.Is(err, ErrNoCluster) {
		t.Errorf("New() outside a cluster = %v, want ErrNoCluster", err)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	nf := &APIError{Code: http.StatusNotFound, Message: "nodes \"x\" not found"}
	if !IsNotFound(nf) || Retriable(nf) {
		t.Error("404 is not found and not retriable")
	}
	for _, code := range []int{409, 429, 500, 503} {
		if !Retriable(&APIError{Code: code}) {
			t.Errorf("%d should be retriable", code)
		}
	}
	if Retriable(&APIError{Code: 403}) {
		t.Error("403 should not be retriable")
	}
	if !Retriable(errors.New("connection refused")) || Retriable(nil) {
		t.Error("transport errors are retriable; nil is not an error")
	}
}
