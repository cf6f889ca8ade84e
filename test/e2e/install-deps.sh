#!/usr/bin/env bash
# Installs what the end-to-end tier runs and does not build itself, from
# Debian's packages, when missing: containerd and runc for the pods, a
# static busybox for the test image, Prometheus for the kubectl plugin and
# quota controller tests, iproute2 for the multi-node cluster's network.
# Needs root and apt; does nothing when all is there.
set -euo pipefail

pkgs=()
command -v containerd >/dev/null || pkgs+=(containerd)
command -v runc >/dev/null || pkgs+=(runc)
command -v prometheus >/dev/null || pkgs+=(prometheus)
# The multi-node cluster's bridge, veths and network namespaces.
command -v ip >/dev/null || pkgs+=(iproute2)
# Debian's busybox package is dynamic; the test image has no libc.
if ! [[ -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
  pkgs+=(busybox-static)
fi
((${#pkgs[@]})) || exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "install-deps.sh: missing ${pkgs[*]}; install them (Debian: apt-get install ${pkgs[*]})" >&2
  exit 1
fi
echo "installing ${pkgs[*]} ..." >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
