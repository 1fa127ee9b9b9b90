#!/usr/bin/env bash
# Boots a blobvirt test guest image with plain QEMU (TCG, no KVM, no libvirt),
# from the disk through SeaBIOS -> MBR -> extlinux, and checks what the guest
# wrote into its own disk.
#
# usage: guest/boot-test.sh [options] IMAGE
#   --serial NAME      SMBIOS system serial = guest name (default plainqemu;
#                      "" = no SMBIOS serial)
#   --expect-name N    name the marker must show (default: the serial, or
#                      "unknown" without one)
#   --expect-boots N   boot count the marker must show (default: the image's
#                      current count + 1, i.e. 1 for a fresh image)
#   --timeout S        give up after S seconds (default 120)
#   --log FILE         keep the serial console output in FILE
#   --stay TICKS       stay-mode test: create /blobvirt/stay (removed again
#                      afterwards unless it was there before), boot, wait
#                      until the guest has written TICKS ticks to its disk,
#                      then stop it (see --stop) and check ticks >= TICKS
#   --stop acpi|kill   how a stay-mode guest is stopped: ACPI power button
#                      (clean shutdown, like `virsh shutdown`; default) or
#                      SIGKILL of QEMU (like `virsh destroy`)
#   --cache MODE       QEMU -drive cache mode (e.g. none = O_DIRECT, so the
#                      host page cache does not absorb the guest's reads;
#                      default: QEMU's default, writeback)
#   --no-marker        do not read the image before or after the boot (no
#                      read-marker.sh, so the only reads of IMAGE are the
#                      guest's; used to trace a boot); success then means
#                      the guest printed its marker line and powered off
#                      ("marker: name=N boots=B" on the console, with B the
#                      --expect-boots value if given); not with --stay
#   -q                 do not copy the serial console to stdout
# Prints "boot-test: OK marker 'name=... boots=N' ..." and exits 0 when the
# marker is right; exits 1 otherwise (and prints the console log).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=guest/lib.sh
. "$here/lib.sh"
prog=boot-test
fail() { echo "$prog: FAIL: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -e/{s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2; exit 2; }

serial=plainqemu
expect=
expect_name=
timeout_s=120
logfile=
stay=
stop=acpi
quiet=0
drive_cache=
no_marker=0
while [ $# -gt 0 ]; do
  case "$1" in
    --serial) serial=${2?}; shift 2 ;;
    --expect-name) expect_name=${2:?}; shift 2 ;;
    --expect-boots) expect=${2:?}; shift 2 ;;
    --timeout) timeout_s=${2:?}; shift 2 ;;
    --log) logfile=${2:?}; shift 2 ;;
    --stay) stay=${2:?}; shift 2 ;;
    --stop) stop=${2:?}; shift 2 ;;
    --cache) drive_cache=${2:?}; shift 2 ;;
    --no-marker) no_marker=1; shift ;;
    -q) quiet=1; shift ;;
    -h | --help) usage ;;
    -*) echo "$prog: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# = 1 ] || usage
image=$1
[ -f "$image" ] || fail "image $image does not exist; build it with guest/build-guest.sh"
case "$stop" in acpi | kill) ;; *) fail "--stop must be acpi or kill" ;; esac
[ "$no_marker" = 0 ] || [ -z "$stay" ] || fail "--no-marker cannot be combined with --stay"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is missing; run guest/install-deps.sh"

work=$(mktemp -d /tmp/blobvirt-boot-test.XXXXXX)
[ -n "$logfile" ] || logfile=$work/console.log
qpid=
stay_added=0
cleanup() {
  local rc=$?
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    kill -KILL "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
  fi
  if [ "$stay_added" = 1 ]; then "$here/set-stay.sh" "$image" off || true; fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -n "$expect_name" ] || expect_name=${serial:-unknown}
if [ "$no_marker" = 1 ]; then
  want="name=$expect_name boots=${expect:-[0-9]*}"
else
  before=$("$here/read-marker.sh" "$image" boots 2>/dev/null || echo 0)
  case "$before" in '' | *[!0-9]*) before=0 ;; esac
  [ -n "$expect" ] || expect=$((before + 1))
  want="name=$expect_name boots=$expect"
fi

if [ -n "$stay" ]; then
  if ! "$here/read-marker.sh" "$image" stay >/dev/null 2>&1; then
    "$here/set-stay.sh" "$image" on
    stay_added=1
  fi
fi

: >"$logfile"
# The serial console goes to the log file; the QEMU monitor reads its
# commands from a FIFO this script holds open (fd 3), so it can press the
# ACPI power button (system_powerdown).
mkfifo "$work/monitor"
exec 3<>"$work/monitor"
qemu_args=(
  -machine accel=tcg -m 256 -nographic -no-reboot
  -drive "file=$image,format=raw,if=virtio${drive_cache:+,cache=$drive_cache}"
  -serial "file:$logfile" -monitor stdio
)
[ -z "$serial" ] || qemu_args+=(-smbios "type=1,serial=$serial")
show_log() {
  echo "---- serial console ----" >&2
  tr -d '\r' <"$logfile" >&2
  echo "---- qemu monitor/stderr ----" >&2
  sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$work/monitor.out" | tr -d '\r' | grep -v '^(qemu) *$' >&2 || true
  echo "----" >&2
}
t0=$(date +%s.%N)
qemu-system-x86_64 "${qemu_args[@]}" <"$work/monitor" >"$work/monitor.out" 2>&1 &
qpid=$!
tpid=
if [ "$quiet" = 0 ]; then
  # Copy the console to stdout as it comes (tail stops after qemu).
  tail -n +1 -f --pid="$qpid" "$logfile" | tr -d '\r' &
  tpid=$!
fi
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
deadline=$(($(date +%s) + timeout_s))

if [ -n "$stay" ]; then
  ticks=0
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$qpid" 2>/dev/null || { show_log; fail "guest stopped before writing $stay ticks (stay mode)"; }
    if grep -q "blobvirt-guest: tick $stay\b" "$logfile"; then break; fi
    sleep 0.5
  done
  grep -q "blobvirt-guest: tick $stay\b" "$logfile" || { show_log; fail "no tick $stay within $timeout_s s"; }
  t_ticks=$(elapsed)
  sleep 1.2 # the guest syncs right after each tick; let the last one land
  running_ticks=$("$here/read-marker.sh" "$image" ticks 2>/dev/null || echo 0)
  echo "$prog: guest running, $running_ticks ticks on its disk after $t_ticks s" >&2
  if [ "$stop" = acpi ]; then
    echo system_powerdown >&3
    for _ in $(seq 60); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$qpid" 2>/dev/null; then
      show_log
      fail "guest ignored the ACPI power button for 30 s"
    fi
    wait "$qpid" || true
    grep -q 'powering off (acpi-power-button' "$logfile" || { show_log; fail "guest did not shut down cleanly"; }
  else
    kill -KILL "$qpid"
    wait "$qpid" 2>/dev/null || true
  fi
  qpid=
  ticks=$("$here/read-marker.sh" "$image" ticks) || fail "no ticks file on the guest disk"
  [ "$ticks" -ge "$stay" ] || fail "ticks on disk $ticks < $stay"
  echo "$prog: stay mode OK: $ticks ticks on disk, stopped by $stop" >&2
else
  while kill -0 "$qpid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
  if kill -0 "$qpid" 2>/dev/null; then
    show_log
    fail "guest did not power off within $timeout_s s"
  fi
  rc=0
  wait "$qpid" || rc=$?
  qpid=
  [ "$rc" = 0 ] || { show_log; fail "qemu exited with status $rc"; }
  grep -q 'blobvirt-guest: powering off (done)' "$logfile" || { show_log; fail "guest did not finish its boot script"; }
fi
t_total=$(elapsed)
[ -z "$tpid" ] || wait "$tpid" 2>/dev/null || true

if [ "$no_marker" = 1 ]; then
  # shellcheck disable=SC2053 # $want may hold a boots=[0-9]* pattern
  marker=$(tr -d '\r' <"$logfile" | sed -n 's/^blobvirt-guest: marker: \(name=[^ ]* boots=[0-9]*\).*/\1/p' | tail -n 1)
  [[ "$marker" == $want ]] || { show_log; fail "console shows marker '$marker', expected '$want'"; }
  echo "$prog: OK console marker '$marker' (image not read; qemu ran $t_total s)"
  exit 0
fi
marker=$("$here/read-marker.sh" "$image" marker) || fail "the guest wrote no marker"
[ "$marker" = "$want" ] || { show_log; fail "marker is '$marker', expected '$want'"; }
echo "$prog: OK marker '$marker' (qemu ran $t_total s)"
