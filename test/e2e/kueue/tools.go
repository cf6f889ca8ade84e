//go:build tools

// Package kueue pins Kueue's manager, so go mod tidy keeps what it needs.
package kueue

import (
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
