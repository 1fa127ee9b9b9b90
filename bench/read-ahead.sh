#!/usr/bin/env bash
# Issue 14: a cold buffered read of a fresh clone through the mount, with
# the mount's kernel read-ahead at 64 KiB (the FUSE handshake's value) and at
# 4096 KiB (read_ahead_kib's default from b850dc1 until 2026-12-03; now 128).
#
# For each run and each setting, alternately, on a fresh local cluster
# (4 nodes, replicas 2, mirrord mounted): import MIB of random data, clone
# it, drop the page cache (so the chunkds' segments are cold too), then time
# `dd bs=BS` of the clone through the mount and check it with cmp.
# Prints one line per read and the medians.
#
# usage: bash bench/read-ahead.sh [RUNS (3)] [MIB (1024)] [BS (128K)]   as root
# (128K is what cp and cat read with; a 4M request reads its whole size
# whatever the read-ahead)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
runs=${1:-3}
mib=${2:-1024}
bs=${3:-128K}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
bv="$PWD/target/release/blobvirt"
work=$(mktemp -d /var/tmp/blobvirt-readahead-XXXXXX)
down() {
  if [ -f "$work/c/cluster.json" ]; then
    "$bv" cluster down --force --dir "$work/c" >/dev/null 2>&1 || true
  fi
  rm -rf "$work/c" "$work/mnt"
}
trap 'down; rm -rf "$work"' EXIT
head -c "${mib}M" /dev/urandom >"$work/img"

# read_once KIB: prints the seconds of the cold dd.
read_once() {
  BLOBVIRT_READ_AHEAD_KIB=$1 "$bv" cluster up --dir "$work/c" --nodes 4 \
    --replicas 2 --mount "$work/mnt" >/dev/null
  export BLOBVIRT_CLUSTER_DIR="$work/c"
  "$bv" vol-import "$work/img" base >/dev/null
  "$bv" vol-clone base fresh >/dev/null
  local dev got
  dev=$(mountpoint -d "$work/mnt")
  got=$(cat "/sys/class/bdi/$dev/read_ahead_kb")
  [ "$got" = "$1" ] || { echo "read_ahead_kb of the mount is $got, not $1" >&2; exit 1; }
  sync
  echo 3 >/proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  dd if="$work/mnt/fresh" of=/dev/null bs="$bs" status=none
  t1=$(date +%s.%N)
  cmp -s "$work/img" "$work/mnt/fresh" || { echo "the clone read differs from the image" >&2; exit 1; }
  down
  awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'
}

declare -A all
for run in $(seq 1 "$runs"); do
  for kib in 64 4096; do
    s=$(read_once "$kib")
    printf 'run %d read_ahead_kb %5d: %.2f s\n' "$run" "$kib" "$s"
    all[$kib]+="$s "
  done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
m64=$(echo "${all[64]}" | median)
m4096=$(echo "${all[4096]}" | median)
printf '| read_ahead_kb | cold dd bs=%s of %d MiB, median of %d |\n|---|---|\n' "$bs" "$mib" "$runs"
printf '| 64 | %.2f s |\n| 4096 | %.2f s |\n' "$m64" "$m4096"
awk -v a="$m64" -v b="$m4096" 'BEGIN {printf "ratio 64/4096: %.2f\n", a / b}'
