#!/usr/bin/env bash
# Installs what blobvirt needs to build and test on Debian 12, as root.
# Idempotent: packages already present are skipped quickly.
set -euo pipefail

# protobuf-compiler, libprotobuf-dev (its well-known .proto files): the
# etcd-client crate compiles etcd's protos with protoc.
need_pkgs=(pkg-config fio fuse3 e2fsprogs util-linux procps psmisc libvirt-dev protobuf-compiler libprotobuf-dev shellcheck)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 update -qq
  apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# etcd-server: poold's etcd engine is tested against real etcd members the
# tests start themselves (on loopback ports they pick). The package's own
# service is not wanted: when this script installs the package, it keeps
# the service from starting and disables it.
if ! dpkg -s etcd-server >/dev/null 2>&1; then
  echo "installing: etcd-server (its etcd.service stays disabled)"
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  had_policy=0
  [ -e "$policy" ] && had_policy=1
  if [ "$had_policy" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
  fi
  apt-get -o DPkg::Lock::Timeout=120 update -qq
  apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends etcd-server >/dev/null
  [ "$had_policy" = 0 ] && rm -f "$policy"
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    [ -x "$d/cargo" ] && export PATH="$d:$PATH"
  done
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo (Rust >= 1.88) is not installed; install it with rustup (https://rustup.rs) and run this again" >&2
  exit 1
fi
# mirrord gives the mount root and its control socket to group blobvirt:
# its members may create, delete and rename volumes and use the control
# socket without being root (docs/mount.md). mirrord falls back to group
# root without it.
if ! getent group blobvirt >/dev/null; then
  echo "creating the system group blobvirt"
  groupadd --system blobvirt
fi
# FUSE needs the device; load the module where it is a module.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
