#!/usr/bin/env bash
# Builds the blobvirt test guest: a raw disk image with an MBR partition
# table, one bootable ext4 partition holding extlinux, the Debian cloud kernel
# and a busybox initramfs whose /init (guest/init.sh) counts boots and writes
# a marker. Boots through the BIOS from the disk (SeaBIOS -> mbr.bin ->
# extlinux -> kernel + initramfs). Debian 12 packages only; run as root
# (extlinux needs the file system mounted, through a loop device).
#
# usage: guest/build-guest.sh OUT.raw [SIZE_MIB]   (default 64, minimum 24)
# environment:
#   BLOBVIRT_GUEST_CACHE  where the kernel .deb is kept
#                         (default /var/cache/blobvirt-guest)
#   BLOBVIRT_GUEST_KERNEL_DEB  use this linux-image .deb instead of the
#                         current linux-image-cloud-amd64 dependency
#   BLOBVIRT_GUEST_CMDLINE  extra kernel parameters (e.g. blobvirt.stay=1)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=build-guest
log() { echo "$prog: $*" >&2; }
fail() { echo "$prog: error: $*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || fail "usage: $0 OUT.raw [SIZE_MIB (default 64)]"
out=$1
size_mib=${2:-64}
case "$size_mib" in '' | *[!0-9]*) fail "SIZE_MIB must be a number of MiB, got '$size_mib'" ;; esac
[ "$size_mib" -ge 24 ] || fail "SIZE_MIB $size_mib is too small; the kernel and initramfs need at least 24 MiB"
[ "$(id -u)" = 0 ] || fail "must run as root (extlinux needs a loop mount); rerun with sudo"
for t in perl flock apt-get dpkg-deb sfdisk mke2fs losetup mount umount extlinux cpio gzip modinfo; do
  command -v "$t" >/dev/null || fail "$t is missing; run guest/install-deps.sh"
done
busybox_bin=/bin/busybox
[ -x "$busybox_bin" ] || fail "$busybox_bin missing; run guest/install-deps.sh"
dpkg -s busybox-static >/dev/null 2>&1 || fail "busybox-static is not installed (a dynamic busybox would not run in the initramfs); run guest/install-deps.sh"
mbr_bin=
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/EXTLINUX/mbr.bin; do
  [ -f "$f" ] && { mbr_bin=$f; break; }
done
[ -n "$mbr_bin" ] || fail "mbr.bin not found; run guest/install-deps.sh (syslinux-common)"

start_time=$(date +%s.%N)
work=$(mktemp -d /tmp/blobvirt-guest.XXXXXX)
mnt=$work/mnt
loopdev=
cleanup() {
  local rc=$?
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" || umount -l "$mnt" || true; fi
  if [ -n "$loopdev" ]; then losetup -d "$loopdev" 2>/dev/null || true; fi
  rm -rf "$work"
  if [ "$rc" != 0 ]; then
    rm -f "$out.tmp"
    echo "$prog: failed (exit $rc)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- kernel -------------------------------------------------------------
cache=${BLOBVIRT_GUEST_CACHE:-/var/cache/blobvirt-guest}
mkdir -p "$cache"
# Builds running at the same time share the cache: one downloads/unpacks.
exec 9>"$cache/.lock"
flock 9
deb=${BLOBVIRT_GUEST_KERNEL_DEB:-}
if [ -z "$deb" ]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\(-unsigned\)\?\)$/\1/p' | head -n 1)
  if [ -z "$pkg" ]; then
    log "apt does not know linux-image-cloud-amd64; running apt-get update"
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-cloud-amd64 |
      sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\(-unsigned\)\?\)$/\1/p' | head -n 1)
  fi
  [ -n "$pkg" ] || fail "cannot resolve linux-image-cloud-amd64 to a kernel package"
  deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*_amd64.deb" | sort | tail -n 1)
  if [ -z "$deb" ]; then
    log "downloading $pkg into $cache"
    (cd "$cache" && apt-get -qq -o APT::Sandbox::User=root download "$pkg") ||
      { apt-get update -qq && (cd "$cache" && apt-get -qq -o APT::Sandbox::User=root download "$pkg"); } ||
      fail "cannot download $pkg"
    deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*_amd64.deb" | sort | tail -n 1)
  fi
fi
[ -f "$deb" ] || fail "kernel package $deb does not exist"
log "kernel package: $deb"
# Unpacked once per kernel package, next to it in the cache.
kroot=$cache/$(basename "$deb" .deb).unpacked
if [ ! -f "$kroot/.complete" ]; then
  rm -rf "$kroot"
  mkdir -p "$kroot"
  dpkg-deb -x "$deb" "$kroot"
  touch "$kroot/.complete"
fi
kver=$(find "$kroot/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n 1)
[ -n "$kver" ] || fail "no /lib/modules/<version> in $deb"
moddir=$kroot/lib/modules/$kver
vmlinuz=$kroot/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || fail "no kernel image boot/vmlinuz-$kver in $deb"
log "kernel version: $kver"
flock -u 9

# --- initramfs ----------------------------------------------------------
ird=$work/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,mnt,run,etc/acpi/PWRF,lib/modules/extra}
cp "$busybox_bin" "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
install -m 0755 "$here/init.sh" "$ird/init"
mknod -m 600 "$ird/dev/console" c 5 1
mknod -m 666 "$ird/dev/null" c 1 3
# busybox acpid runs CONFDIR/PWRF/00000080 on an ACPI power-button press.
printf '#!/bin/sh\ntouch /run/poweroff\n' >"$ird/etc/acpi/PWRF/00000080"
chmod 0755 "$ird/etc/acpi/PWRF/00000080"

norm() { echo "${1//-/_}"; }
is_builtin() { # is_builtin NAME: compiled into the kernel?
  [ -f "$moddir/modules.builtin" ] &&
    sed 's|.*/||; s|\.ko$||; s|-|_|g' "$moddir/modules.builtin" | grep -qx "$(norm "$1")"
}
mod_file() { # mod_file NAME -> path of NAME.ko[.xz|.zst|.gz] or nothing
  local n d
  n=$(norm "$1")
  d=${n//_/-}
  find "$moddir/kernel" \( -name "$n.ko*" -o -name "$d.ko*" \) -print -quit
}
copy_mod() { # copy_mod FILE DEST.ko: decompress if needed
  case "$1" in
    *.ko.xz) xz -dc "$1" >"$2" ;;
    *.ko.zst) zstd -qdc "$1" >"$2" ;;
    *.ko.gz) gzip -dc "$1" >"$2" ;;
    *.ko) cp "$1" "$2" ;;
    *) fail "unknown module format $1" ;;
  esac
}
order=()
declare -A seen=()
add_mod() { # add_mod NAME: append NAME after its dependencies (depth first)
  local n f deps soft d
  n=$(norm "$1")
  [ -z "${seen[$n]:-}" ] || return 0
  seen[$n]=1
  if is_builtin "$n"; then
    log "module $n is built in"
    return 0
  fi
  f=$(mod_file "$n")
  [ -n "$f" ] || fail "kernel module $n not found under $moddir"
  deps=$(modinfo -F depends "$f" | tr ',' ' ')
  soft=$(modinfo -F softdep "$f" | sed -n 's/.*pre: *\([^:]*\)\( post:.*\)\?$/\1/p')
  for d in $deps $soft; do add_mod "$d"; done
  copy_mod "$f" "$ird/lib/modules/$n.ko"
  order+=("$n")
}
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
  crc32c_generic ext4; do
  add_mod "$m"
done
printf '%s\n' "${order[@]}" >"$ird/etc/blobvirt-modules"
log "initramfs modules (load order): ${order[*]}"
# Optional, for a clean ACPI shutdown in stay mode.
for m in button evdev; do
  if ! is_builtin "$m"; then
    f=$(mod_file "$m")
    [ -z "$f" ] || copy_mod "$f" "$ird/lib/modules/extra/$m.ko"
  fi
done

# --- partition contents -------------------------------------------------
root=$work/root
mkdir -p "$root/boot/extlinux" "$root/blobvirt"
cp "$vmlinuz" "$root/boot/vmlinuz"
(cd "$ird" && find . -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc --owner 0:0 --quiet) | gzip -9 >"$root/boot/initrd.gz"
cmdline="console=ttyS0,115200 root=/dev/vda1 quiet panic=-1${BLOBVIRT_GUEST_CMDLINE:+ $BLOBVIRT_GUEST_CMDLINE}"
cat >"$root/boot/extlinux/extlinux.conf" <<EOF
# blobvirt test guest (built by guest/build-guest.sh, kernel $kver)
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT blobvirt
LABEL blobvirt
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.gz
  APPEND $cmdline
EOF
cat >"$root/blobvirt/README" <<'EOF'
blobvirt test guest state. boots: boot counter; marker: "name=NAME boots=N";
log: one line per boot/shutdown; create "stay" to keep the guest running
(it then writes "ticks" every second); "name": fallback name.
EOF

# --- disk image ---------------------------------------------------------
part_start=2048 # sectors (1 MiB)
total_sectors=$((size_mib * 2048))
part_sectors=$((total_sectors - part_start))
rm -f "$out.tmp"
truncate -s "${size_mib}M" "$out.tmp"
printf 'label: dos\nstart=%d, size=%d, type=83, bootable\n' "$part_start" "$part_sectors" |
  sfdisk -q "$out.tmp"
part=$work/part.ext4
truncate -s $((part_sectors * 512)) "$part"
# extlinux 6.04 cannot read ext4 with the 64bit feature.
mke2fs -q -F -t ext4 -O ^64bit -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 -L blobvirt \
  -d "$root" "$part"
dd if="$part" of="$out.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$part"

# Mount the partition through a loop device at its offset. (Partition
# devices of loop devices are unreliable here: `losetup --partscan` creates
# none and ones added with partx can outlive the loop device with a stale
# size. extlinux could not read the offset from them anyway, see below.)
loopdev=$(losetup --find --show --offset $((part_start * 512)) --sizelimit $((part_sectors * 512)) "$out.tmp")
mkdir -p "$mnt"
mount -t ext4 -o noinit_itable "$loopdev" "$mnt"
extlinux --install "$mnt/boot/extlinux" >/dev/null 2>"$work/extlinux.err" ||
  { cat "$work/extlinux.err" >&2; fail "extlinux --install failed"; }
sync
umount "$mnt"
losetup -d "$loopdev"
loopdev=
dd if="$mbr_bin" of="$out.tmp" bs=440 count=1 conv=notrunc status=none
# The boot sector's "hidden sectors" field (offset 28, 32-bit little endian)
# should hold the partition's start sector. extlinux cannot learn it from a
# loop device (no HDIO_GETGEO) and writes 0, so set it here. (mbr.bin hands
# the partition entry to the boot sector, which then boots even with 0 here
# - tried - but other chain loaders may not.)
vbr=$((part_start * 512))
perl -e 'print pack("V", $ARGV[0])' "$part_start" |
  dd of="$out.tmp" bs=1 seek=$((vbr + 28)) conv=notrunc status=none
hidden=$(od -An -tu4 -j $((vbr + 28)) -N4 "$out.tmp" | tr -d ' ')
[ "$hidden" = "$part_start" ] || fail "could not set the boot sector's partition offset ($hidden != $part_start)"
[ "$(od -An -c -j $((vbr + 3)) -N8 "$out.tmp" | tr -d ' ')" = SYSLINUX ] ||
  fail "extlinux did not write its boot sector into the partition"
mv "$out.tmp" "$out"

end_time=$(date +%s.%N)
log "built $out: ${size_mib} MiB raw, $(du -k "$out" | cut -f1) KiB allocated," \
  "kernel $kver, initramfs $(du -k "$root/boot/initrd.gz" | cut -f1) KiB," \
  "$(awk -v a="$start_time" -v b="$end_time" 'BEGIN { printf "%.1f", b - a }') s"
