#!/usr/bin/env bash
# Builds helm from source through the Go module proxy into a cache outside
# the repository keyed by version, and prints the binary's path. A second
# run builds nothing. GPUSLICE_CACHE moves the cache (default
# ~/.cache/gpuslice).
set -euo pipefail
cd "$(dirname "$0")/helm"

HELM_VERSION=v3.18.6
cache="${GPUSLICE_CACHE:-$HOME/.cache/gpuslice}/helm-${HELM_VERSION}"
bin="$cache/helm"
if [[ ! -x "$bin" ]]; then
  mkdir -p "$cache"
  echo "building helm ${HELM_VERSION} ..." >&2
  go mod download >/dev/null
  CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    -o "$bin.tmp" helm.sh/helm/v3/cmd/helm
  mv "$bin.tmp" "$bin"
fi
echo "$bin"
