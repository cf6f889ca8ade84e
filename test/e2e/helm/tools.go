//go:build tools

// Package helm pins the helm command, so go mod tidy keeps what it needs.
package helm

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
