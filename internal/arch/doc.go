// Package arch holds no code: its test keeps the package graph in
// docs/architecture.md equal to what go list reports (go test
// ./internal/arch -update rewrites it, as make docs does).
package arch
