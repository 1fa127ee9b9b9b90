#!/bin/busybox sh
# shellcheck shell=sh
# /init of the blobvirt test guest (busybox sh, PID 1). Copied into the
# initramfs by build-guest.sh. It loads the virtio modules, mounts the boot
# disk's ext4 partition, counts boots, writes a marker naming this guest, and
# then powers off, or stays up writing a tick counter ("stay" mode).
#
# Files on the guest partition (paths relative to its root):
#   blobvirt/boots   boot counter, incremented on every boot
#   blobvirt/marker  "name=<NAME> boots=<N>" of the latest boot
#   blobvirt/log     one line appended per boot and per shutdown
#   blobvirt/stay    if present: stay up instead of powering off
#   blobvirt/ticks   stay mode: counter written and synced every second
#   blobvirt/name    fallback name when there is no SMBIOS serial
# Kernel command line: blobvirt.name=NAME, blobvirt.stay=1,
# blobvirt.root=DEV (or root=DEV; default /dev/vda1).

/bin/busybox --install -s /bin
PATH=/bin
export PATH

say() { echo "blobvirt-guest: $*" >/dev/console; }

MNT=/mnt
mounted=0

die() {
  say "FAILED: $*"
  [ "$mounted" = 1 ] && { sync; umount "$MNT" 2>/dev/null; }
  say "powering off after failure"
  sync
  poweroff -f
  sleep 1000000
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
# The kernel must not try to run a modprobe that has no modules.dep.
echo /bin/true >/proc/sys/kernel/modprobe 2>/dev/null || true
say "started, kernel $(uname -r)"

cmdline=$(cat /proc/cmdline)
arg() { # arg KEY -> value of KEY= on the kernel command line (last wins)
  v=""
  for w in $cmdline; do
    case "$w" in "$1"=*) v=${w#*=} ;; esac
  done
  echo "$v"
}

while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$mod.ko" || die "cannot load module $mod"
done </etc/blobvirt-modules
say "modules loaded: $(tr '\n' ' ' </etc/blobvirt-modules)"

root=$(arg blobvirt.root)
[ -n "$root" ] || root=$(arg root)
[ -n "$root" ] || root=/dev/vda1
i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ "$i" -le 100 ] || die "disk $root did not appear within 10 s"
  sleep 0.1
done
mount -t ext4 -o rw "$root" "$MNT" || die "cannot mount $root"
mounted=1
say "mounted $root at $MNT"
B=$MNT/blobvirt
mkdir -p "$B" || die "cannot create $B"

boots=0
[ -f "$B/boots" ] && boots=$(cat "$B/boots")
case "$boots" in '' | *[!0-9]*) boots=0 ;; esac
boots=$((boots + 1))

valid_name() { # a usable name: non-empty, not a firmware placeholder
  case "$1" in
    '' | 'Not Specified' | 'None' | 'To be filled by O.E.M.' | 0) return 1 ;;
  esac
  return 0
}
name=$(arg blobvirt.name)
src=cmdline
if ! valid_name "$name"; then
  name=$(cat /sys/class/dmi/id/product_serial 2>/dev/null)
  src=smbios
fi
if ! valid_name "$name" && [ -f "$B/name" ]; then
  name=$(head -n 1 "$B/name")
  src=file
fi
if ! valid_name "$name"; then
  name=unknown
  src=default
fi
# Keep the marker one token: spaces in a name become underscores.
name=$(echo "$name" | tr ' \t' '__')

write_file() { # write_file FILE CONTENT: replace FILE atomically
  if ! { echo "$2" >"$1.tmp" && mv "$1.tmp" "$1"; }; then
    die "cannot write $1"
  fi
}
write_file "$B/boots" "$boots"
write_file "$B/marker" "name=$name boots=$boots"
stay=0
[ "$(arg blobvirt.stay)" = 1 ] && stay=1
[ -e "$B/stay" ] && stay=1
echo "boot=$boots name=$name name_from=$src stay=$stay uptime=$(cut -d' ' -f1 /proc/uptime)" >>"$B/log"
sync
say "marker: name=$name boots=$boots (name from $src)"

shutdown_clean() { # shutdown_clean REASON
  echo "shutdown boot=$boots reason=$1 uptime=$(cut -d' ' -f1 /proc/uptime)" >>"$B/log"
  sync
  umount "$MNT" || die "cannot unmount $MNT"
  mounted=0
  sync
  say "powering off ($1)"
  poweroff -f
  sleep 1000000
}

if [ "$stay" = 1 ]; then
  # ACPI power button (virsh shutdown, QEMU system_powerdown) ends stay mode
  # cleanly: busybox acpid runs /etc/acpi/PWRF/00000080, which drops a flag.
  for m in button evdev; do
    [ -f "/lib/modules/extra/$m.ko" ] && insmod "/lib/modules/extra/$m.ko" 2>/dev/null
  done
  if acpid -c /etc/acpi -l /run/acpid.log; then
    say "acpid watching $(ls /dev/input 2>/dev/null | tr '\n' ' ')for the ACPI power button"
  else
    say "acpid not started; only a hard stop ends this guest"
  fi
  say "stay mode: writing $B/ticks every second"
  ticks=0
  while [ ! -e /run/poweroff ]; do
    ticks=$((ticks + 1))
    echo "$ticks" >"$B/ticks"
    sync
    say "tick $ticks"
    sleep 1
  done
  shutdown_clean "acpi-power-button after $ticks ticks"
fi
shutdown_clean done
