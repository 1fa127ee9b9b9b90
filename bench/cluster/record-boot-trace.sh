#!/usr/bin/env bash
# Records trace (a) of the issue-5 benchmarks: the reads of a real test-guest
# boot, as mirrord sees them.
#
# usage: bench/cluster/record-boot-trace.sh [OUT_TRACE] [SIZE_MIB]
#   OUT_TRACE  default bench/traces/guest-boot.trace
#   SIZE_MIB   size of the guest image, default 2048
#
# Builds the test guest (guest/build-guest.sh, root) at SIZE_MIB, starts a
# local repository (`blobvirt cluster up --nodes 3`, no mount), imports the
# image as volume guest-boot, starts mirrord by hand with
# `--trace-reads`, boots the guest from the mounted file with
# guest/boot-test.sh (plain QEMU TCG, `--cache none` so every guest read
# reaches mirrord as an O_DIRECT read, `--no-marker` so nothing but the guest
# reads the file), stops mirrord (which flushes the trace) and writes
# OUT_TRACE in the trace format of the issue-5 contract:
#   # image_size=BYTES
#   # source=test-guest boot recorded through mirrord --trace-reads
#   # unique_bytes=B fraction=F
#   OFFSET LENGTH          (one guest read per line, in issue order)
# Prints the fraction of the image the boot read. Everything it starts is
# stopped by PID, the mount is removed and the temporary directory deleted on
# exit, also on failure. Set KEEP=1 to keep the temporary directory, and
# IMAGE_OUT=PATH to keep a copy of the guest image the trace was recorded on.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
prog=record-boot-trace
fail() { echo "$prog: error: $*" >&2; exit 1; }

out=${1:-$root/bench/traces/guest-boot.trace}
size_mib=${2:-2048}
case "$size_mib" in '' | *[!0-9]*) fail "SIZE_MIB must be a number of MiB, got '$size_mib'" ;; esac
[ "$(id -u)" = 0 ] || fail "must run as root (guest/build-guest.sh and FUSE mounts need it); rerun with sudo"
vol=guest-boot
bv=$root/target/release/blobvirt
mirrord_bin=$root/target/release/mirrord

work=$(mktemp -d /var/tmp/blobvirt-boot-trace.XXXXXX)
mnt=$work/mnt
mpid=
cluster_up=0
cleanup() {
  local rc=$?
  if [ -n "$mpid" ] && kill -0 "$mpid" 2>/dev/null; then
    kill -TERM "$mpid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$mpid" 2>/dev/null || true
    wait "$mpid" 2>/dev/null || true
  fi
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" 2>/dev/null || umount -l "$mnt" || true; fi
  if [ "$cluster_up" = 1 ]; then "$bv" cluster down --force --dir "$work/cluster" >/dev/null 2>&1 || true; fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo "$prog: kept $work" >&2
  else
    rm -rf "$work"
  fi
  [ "$rc" = 0 ] || echo "$prog: failed (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "$prog: building release binaries" >&2
(cd "$root" && cargo build --release -q -p mirrord -p virsh-ext -p pool-backend -p chunkd) \
  || fail "cargo build --release failed"

echo "$prog: building the test guest ($size_mib MiB)" >&2
"$root/guest/build-guest.sh" "$work/guest.raw" "$size_mib" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; fail "guest/build-guest.sh failed"; }
image_size=$(stat -c %s "$work/guest.raw")

echo "$prog: starting a 3-node repository" >&2
cluster_up=1
"$bv" cluster up --nodes 3 --dir "$work/cluster" >"$work/up.out" \
  || fail "blobvirt cluster up failed"
pool=$(sed -n 's/^BLOBVIRT_POOL=//p' "$work/up.out")
[ -n "$pool" ] || fail "blobvirt cluster up printed no BLOBVIRT_POOL line"
export BLOBVIRT_CONFIG="$work/cluster/blobvirt.toml"   # the cluster's CA and certificate
"$bv" vol-import --pool "$pool" "$work/guest.raw" "$vol" >"$work/import.out" \
  || fail "blobvirt vol-import of the guest image failed"
# IMAGE_OUT=PATH keeps the image the trace belongs to (bench/cluster/run.sh
# replays the trace against it).
if [ -n "${IMAGE_OUT:-}" ]; then cp --sparse=always "$work/guest.raw" "$IMAGE_OUT"; fi
rm -f "$work/guest.raw"

echo "$prog: starting mirrord with --trace-reads" >&2
mkdir -p "$mnt" "$work/cache"
"$mirrord_bin" --pool "$pool" --mount "$mnt" --cache "$work/cache" \
  --trace-reads "$work/reads.log" 2>"$work/mirrord.log" &
mpid=$!
for _ in $(seq 200); do
  grep -q 'mirrord ready' "$work/mirrord.log" && [ -e "$mnt/$vol" ] && break
  kill -0 "$mpid" 2>/dev/null || { cat "$work/mirrord.log" >&2; fail "mirrord exited"; }
  sleep 0.1
done
[ -e "$mnt/$vol" ] || { cat "$work/mirrord.log" >&2; fail "volume $vol did not appear under $mnt"; }

echo "$prog: booting the guest from $mnt/$vol" >&2
"$root/guest/boot-test.sh" --cache none --no-marker --serial trace --expect-boots 1 \
  --timeout 300 --log "$work/console.log" -q "$mnt/$vol" >&2 \
  || fail "the guest did not boot from the mirrord mount"

echo "$prog: stopping mirrord" >&2
kill -TERM "$mpid"
rc=0
wait "$mpid" || rc=$?
mpid=
[ "$rc" = 0 ] || { cat "$work/mirrord.log" >&2; fail "mirrord exited with status $rc"; }

# Only this volume's reads, then the unique bytes (merged intervals).
awk -v v="$vol" '$1 == v { print $2, $3 }' "$work/reads.log" >"$work/reads"
[ -s "$work/reads" ] || fail "mirrord traced no reads of $vol"
reads=$(wc -l <"$work/reads")
total=$(awk '{ s += $2 } END { printf "%d", s }' "$work/reads")
unique=$(sort -n -k1,1 -k2,2n "$work/reads" | awk '
  { s = $1; e = $1 + $2
    if (n && s <= ce) { if (e > ce) ce = e }
    else { if (n) u += ce - cs; cs = s; ce = e; n = 1 } }
  END { if (n) u += ce - cs; printf "%d", u }')
fraction=$(awk -v u="$unique" -v s="$image_size" 'BEGIN { printf "%.6f", u / s }')

mkdir -p "$(dirname "$out")"
{
  echo "# image_size=$image_size"
  echo "# source=test-guest boot recorded through mirrord --trace-reads"
  echo "# unique_bytes=$unique fraction=$fraction"
  echo "# reads=$reads read_bytes=$total size_mib=$size_mib cache=none"
  cat "$work/reads"
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "$prog: $reads reads, $total bytes read, $unique unique bytes of $image_size" >&2
echo "$prog: wrote $out" >&2
echo "fraction=$fraction"
