#!/usr/bin/env bash
# Issue 14: N domains deployed from one image on one host fetch about what
# one domain fetches, thanks to mirrord's host-level chunk cache.
#
# For each run and each cache setting (on: the default 256 MiB; off:
# BLOBVIRT_CHUNK_CACHE_MIB=0), on a fresh local cluster each time (4 nodes,
# replicas 2, mirrord mounted, a libvirt pool): import the test guest,
# `blobvirt deploy` 1 domain (then, on another fresh cluster, N domains),
# wait until every guest has booted and written a tick to its own clone,
# and read mirrord's network fetches (blobvirt_mirrord_fetched_bytes_total).
# Prints the medians and the ratio N-domain / 1-domain bytes, per setting.
#
# usage: bash bench/host-cache.sh [RUNS (3)] [N (8)]   as root
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
root=$PWD
runs=${1:-3}
n=${2:-8}
# shellcheck source=../scripts/lib.sh
source scripts/lib.sh
prepare_libvirt_host
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
bv="$root/target/release/blobvirt"
work=$(mktemp -d /var/tmp/blobvirt-hostcache-XXXXXX)
# QEMU runs as its own user and must reach the mount inside.
chmod 755 "$work"
pool=bvhostcache
prefix=hc

domains() { virsh -q list --all --name | grep -E "^$prefix-[0-9]+\$" || true; }
teardown() {
  for d in $(domains); do
    virsh -q destroy "$d" >/dev/null 2>&1 || true
    virsh -q undefine "$d" >/dev/null 2>&1 || true
  done
  if [ -f "$work/cluster/cluster.json" ]; then
    "$bv" cluster down --force --dir "$work/cluster" >/dev/null 2>&1 || true
  fi
  rm -rf "$work/cluster" "$work/logs"
}
trap 'teardown; rm -rf "$work"' EXIT

guest/build-guest.sh "$work/guest.raw" >/dev/null
guest/set-stay.sh "$work/guest.raw" on

fetched() {
  local addr
  addr=$(python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
print(next(p["metrics"] for p in c["processes"] if p["name"] == "mirrord"))' "$work/cluster/cluster.json")
  python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(f"http://{sys.argv[1]}/metrics").read().decode())' "$addr" \
    | awk '$1 == "blobvirt_mirrord_fetched_bytes_total" {print $2}'
}

# deploy COUNT CACHE_MIB: prints the bytes mirrord fetched for COUNT domains.
deploy() {
  local count=$1 mib=$2 before after
  teardown
  mkdir -p "$work/logs"
  BLOBVIRT_CHUNK_CACHE_MIB=$mib "$bv" cluster up --nodes 4 --replicas 2 \
    --dir "$work/cluster" --mount "$work/mnt" --libvirt --libvirt-pool "$pool" > "$work/up.out"
  export BLOBVIRT_CLUSTER_DIR="$work/cluster"
  "$bv" vol-import "$work/guest.raw" guest >/dev/null
  sed -e "s/pool='blobvirt'/pool='$pool'/" -e "s|CONSOLE_LOG|$work/logs/TEMPLATE.log|" \
    guest/domain-template.xml > "$work/template.xml"
  before=$(fetched)
  "$bv" deploy guest --count "$count" --template "$work/template.xml" --name-prefix "$prefix" >/dev/null
  wait_ticks "$work/mnt" "$prefix" "$count" 1 600
  after=$(fetched)
  python3 -c "print(int(float('$after') - float('$before')))"
}

median() { python3 -c 'import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

declare -A one many
for r in $(seq 1 "$runs"); do
  for mode in on off; do
    mib=256; [ "$mode" = off ] && mib=0
    one[$mode]+=" $(deploy 1 $mib)"
    many[$mode]+=" $(deploy "$n" $mib)"
    echo "run $r, cache $mode: 1 domain: ${one[$mode]##* } B, $n domains: ${many[$mode]##* } B" >&2
  done
done
echo "| chunk cache | 1 domain fetched MiB (median) | $n domains fetched MiB (median) | ratio ($n / 1) | runs |"
echo "|---|---|---|---|---|"
for mode in on off; do
  # shellcheck disable=SC2086
  o=$(median ${one[$mode]}); m=$(median ${many[$mode]})
  python3 -c "print(f'| $mode | {$o/2**20:.1f} | {$m/2**20:.1f} | {$m/$o:.2f} | $runs |')"
done
echo "per run (bytes): on: 1=[${one[on]} ] $n=[${many[on]} ]; off: 1=[${one[off]} ] $n=[${many[off]} ]"
