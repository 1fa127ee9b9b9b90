#!/usr/bin/env bash
# Prepares this machine for blobvirt's libvirt integration, as root:
# installs libvirt, QEMU and libvirt-dev (for the `virt` crate), starts
# virtlogd and libvirtd when they are not running (there is no systemd
# here), and makes a running libvirtd reread its hooks (SIGHUP) when the
# blobvirt hook is newer than the daemon. Idempotent: run it any time.
#
#   scripts/libvirt-setup.sh          # install + start + reload hooks if needed
#   scripts/libvirt-setup.sh --check  # only report, change nothing
set -euo pipefail

check_only=0
[ "${1:-}" = "--check" ] && check_only=1
hook=/etc/libvirt/hooks/qemu.d/50-blobvirt
uri=qemu:///system
stamp=/run/blobvirt/libvirtd-hook-reload

pkgs=(libvirt-daemon-system qemu-system-x86 libvirt-dev pkg-config)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$check_only" = 1 ]; then
    echo "missing packages: ${missing[*]}"; exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 update -qq
  apt-get -o DPkg::Lock::Timeout=120 install -y -qq "${missing[@]}" >/dev/null
fi

# Without udev /dev/kvm is root-only; libvirt then finds its cached QEMU
# capabilities stale on every define and re-probes QEMU (~45 s each). Give it
# the owner and mode udev gives it on Debian. Domains stay type='qemu' (TCG).
if [ "$check_only" = 0 ] && [ -e /dev/kvm ] && getent group kvm >/dev/null; then
  chown root:kvm /dev/kvm && chmod 0660 /dev/kvm
fi

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

for d in virtlogd libvirtd; do
  if pid=$(daemon_pid "$d"); then
    echo "$d runs (pid $pid)"
  elif [ "$check_only" = 1 ]; then
    echo "$d is not running"; exit 1
  else
    echo "starting $d"
    "$d" -d
  fi
done

# Wait until libvirtd answers.
for _ in $(seq 1 100); do
  virsh -c "$uri" version >/dev/null 2>&1 && break
  sleep 0.1
done
if ! virsh -c "$uri" version >/dev/null 2>&1; then
  echo "error: libvirtd does not answer on $uri; read /var/log/libvirt/libvirtd.log" >&2
  exit 1
fi

# libvirtd scans its hooks at start and on SIGHUP: reload it when the
# blobvirt hook was installed after the daemon started.
if [ -x "$hook" ] && pid=$(daemon_pid libvirtd); then
  # start time: boot time + field 22 of /proc/PID/stat (clock ticks).
  btime=$(awk '/^btime/ {print $2}' /proc/stat)
  ticks=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $20}')
  started=$(( btime + ticks / $(getconf CLK_TCK) ))
  # A SIGHUP sent since (by this script or blobvirt pool-define) counts too.
  if [ "$(cat "$stamp" 2>/dev/null)" = "$pid" ]; then
    reloaded=$(stat -c %Y "$stamp")
    [ "$reloaded" -gt "$started" ] && started=$reloaded
  fi
  if [ "$(stat -c %Y "$hook")" -ge "$started" ]; then
    if [ "$check_only" = 1 ]; then
      echo "libvirtd (pid $pid) started before $hook was installed; send it SIGHUP"; exit 1
    fi
    echo "sending libvirtd SIGHUP so it runs $hook"
    kill -HUP "$pid"
    mkdir -p "$(dirname "$stamp")" && echo "$pid" > "$stamp"
    sleep 0.5
  fi
fi
echo "libvirt ready on $uri"
