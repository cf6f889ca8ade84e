#!/usr/bin/env bash
# Builds containerd 2.x (containerd, its runc shim and ctr) from source
# through the Go module proxy into a cache outside the repository keyed by
# version, and prints the directory to put first in PATH. A second run
# builds nothing. Debian 12's containerd 1.6 cannot inject CDI devices,
# which DRA needs (docs/testing.md). GPUSLICE_CACHE moves the cache
# (default ~/.cache/gpuslice).
set -euo pipefail

CONTAINERD_VERSION=v2.4.2
dir="${GPUSLICE_CACHE:-$HOME/.cache/gpuslice}/containerd-${CONTAINERD_VERSION}"
cmds=(containerd containerd-shim-runc-v2 ctr)
missing=0
for c in "${cmds[@]}"; do [[ -x "$dir/$c" ]] || missing=1; done
if ((missing)); then
  echo "building containerd ${CONTAINERD_VERSION} ..." >&2
  tmp="$dir.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  pkgs=()
  for c in "${cmds[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$c@${CONTAINERD_VERSION}"); done
  (cd / && GOBIN="$tmp" GOFLAGS=-mod=mod go install -trimpath "${pkgs[@]}") >&2
  rm -rf "$dir"
  mv "$tmp" "$dir"
fi
echo "$dir"
