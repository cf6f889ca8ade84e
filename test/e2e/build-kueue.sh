#!/usr/bin/env bash
# Builds Kueue's manager from source through the Go module proxy into a
# cache outside the repository keyed by version, and prints the binary's
# path; copies its CRDs and webhook manifests beside it (the end-to-end
# tier installs them). A second run builds nothing. GPUSLICE_CACHE moves the
# cache (default ~/.cache/gpuslice). About 4 minutes cold on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/kueue"

KUEUE_VERSION="$(awk '$1 == "sigs.k8s.io/kueue" {print $2; exit} $2 == "sigs.k8s.io/kueue" {print $3; exit}' go.mod)"
[[ -n "$KUEUE_VERSION" ]] || { echo "build-kueue.sh: test/e2e/kueue/go.mod requires no sigs.k8s.io/kueue" >&2; exit 2; }
cache="${GPUSLICE_CACHE:-$HOME/.cache/gpuslice}/kueue-${KUEUE_VERSION}"
bin="$cache/kueue"
if [[ ! -x "$bin" ]]; then
  mkdir -p "$cache"
  echo "building Kueue ${KUEUE_VERSION} ..." >&2
  go mod download >/dev/null
  src="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
  rm -rf "$cache/crd" && mkdir -p "$cache/crd"
  cp "$src"/config/components/crd/bases/*.yaml "$cache/crd/"
  cp "$src/config/components/webhook/manifests.yaml" "$cache/webhooks.yaml"
  chmod -R u+w "$cache/crd" "$cache/webhooks.yaml"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin.tmp" sigs.k8s.io/kueue/cmd/kueue
  mv "$bin.tmp" "$bin"
fi
echo "$bin"
