#!/usr/bin/env bash
# Installs what the emulated-cluster harness and its baselines use, as root
# on Debian 12: iproute2 (ip netns, tc), socat and curl (prepropagation and
# copy-back), busybox-static (httpd; the guest build needs the static one, and the two packages conflict), qemu-utils (qemu-nbd, qemu-img) and
# qemu-system-common (qemu-storage-daemon), gnuplot-nox (plots).
set -euo pipefail
need=(iproute2 socat curl busybox-static qemu-utils qemu-system-common gnuplot-nox util-linux)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 update -qq
  apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
