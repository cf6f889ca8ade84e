#!/usr/bin/env bash
# Writes the module that builds one Kubernetes release (and the etcd server
# that release requires) from source: test/e2e/k8s/<version>/. Run it once
# when adding a version; commit go.mod, go.sum and tools.go.
#
#   test/e2e/k8s/new-version.sh v1.37.2
set -euo pipefail
v="${1:?usage: new-version.sh vX.Y.Z}"
[[ "$v" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "new-version.sh: $v is not a Kubernetes version vX.Y.Z" >&2; exit 2; }
staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
dir="$(cd "$(dirname "$0")" && pwd)/$v"
mod="$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
etcd="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$mod")"
[[ -n "$etcd" ]] || { echo "new-version.sh: k8s.io/kubernetes $v names no etcd server version" >&2; exit 1; }
mkdir -p "$dir"
{
  echo "// Module $v builds Kubernetes $v and etcd $etcd for the end-to-end tier."
  echo "module github.com/gpuslice/gpuslice/test/e2e/k8s/$v"
  echo
  echo "go 1.26.8"
  echo
  echo "require ("
  echo "	go.etcd.io/etcd/server/v3 $etcd"
  echo "	k8s.io/kubernetes $v"
  echo ")"
  echo
  echo "replace ("
  # k8s.io/kubernetes replaces its staging modules with local paths; a
  # module outside its tree names their published versions instead.
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$mod" | sort -u | while read -r m; do
    echo "	$m => $m $staging"
  done
  echo ")"
} > "$dir/go.mod"
cat > "$dir/tools.go" <<GO
//go:build tools

// Package k8s pins the commands the end-to-end tier builds from Kubernetes
// $v, so go mod tidy keeps everything they need.
package k8s

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
(cd "$dir" && go mod tidy)
echo "$dir"
