#!/usr/bin/env bash
# Builds etcd and the Kubernetes binaries the end-to-end tier runs, from
# source through the Go module proxy, into a cache outside the repository
# keyed by version (K8S_VERSION, default v1.37.2); a second run finds them
# and builds nothing.
#
#   test/e2e/build-k8s.sh [binary...]   # default: all of them
#
# Prints the cache directory. GPUSLICE_CACHE moves the cache (default
# ~/.cache/gpuslice). About 6.5 minutes cold on 2 cores; seconds warm.
set -euo pipefail
# K8S_VERSION picks the release; each has its module in test/e2e/k8s/<version>
# (written by test/e2e/k8s/new-version.sh), with the etcd it requires.
K8S_VERSION="${K8S_VERSION:-v1.37.2}"
dir="$(dirname "$0")/k8s/$K8S_VERSION"
[[ -f "$dir/go.mod" ]] || { echo "build-k8s.sh: no module for Kubernetes $K8S_VERSION in test/e2e/k8s (have: $(cd "$(dirname "$0")/k8s" && ls -d v*/ | tr -d / | tr '\n' ' '))" >&2; exit 2; }
cd "$dir"
ETCD_VERSION="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' go.mod)"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
cache="${GPUSLICE_CACHE:-$HOME/.cache/gpuslice}/k8s-${K8S_VERSION}"
mkdir -p "$cache"

bins=("$@")
((${#bins[@]})) || bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
  stamp+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=2025-01-01T00:00:00Z"
done

go mod download >/dev/null
for b in "${bins[@]}"; do
  [[ -x "$cache/$b" ]] && continue
  case "$b" in
    etcd) pkg=go.etcd.io/etcd/server/v3 flags="-s -w" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kubectl) pkg=k8s.io/kubernetes/cmd/$b flags="-s -w $stamp" ;;
    *) echo "build-k8s.sh: unknown binary $b" >&2; exit 2 ;;
  esac
  echo "building $b (Kubernetes $K8S_VERSION, etcd $ETCD_VERSION) ..." >&2
  CGO_ENABLED=0 go build -trimpath -ldflags "$flags" -o "$cache/$b.tmp" "$pkg"
  mv "$cache/$b.tmp" "$cache/$b"
done
echo "$cache"
