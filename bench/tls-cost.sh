#!/usr/bin/env bash
# What mutual TLS costs: import, export and a cold read through the mirrord
# mount of the same random image, on a local cluster started with TLS (the
# default) and with --no-tls, alternating the order in each run so both
# see the same machine. Prints one line per measurement and a table of
# medians and of the median TLS/plain ratio (ratios taken within a run).
#
#   bash bench/tls-cost.sh [RUNS [SIZE_MIB]]      # default 5 runs, 512 MiB
#   BIN=DIR bash bench/tls-cost.sh                # binaries (default target/release)
#
# Root (drops the page cache between passes; mounts FUSE).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
size=${2:-512}
bin=${BIN:-$PWD/target/release}
work=${WORK:-/var/tmp/blobvirt-tls-cost}
bv="$bin/blobvirt"
[ -x "$bv" ] || { echo "tls-cost: $bv is missing; cargo build --release --workspace --bins" >&2; exit 1; }

rm -rf "$work"
mkdir -p "$work"
img="$work/image.raw"
head -c "$((size << 20))" /dev/urandom >"$img"
results="$work/results.txt"
: >"$results"

cleanup() {
  [ -f "$work/c/cluster.json" ] && "$bv" cluster down --force --purge --dir "$work/c" >/dev/null 2>&1 || true
}
trap cleanup EXIT

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
secs() { local t0; t0=$(date +%s.%N); "$@" >/dev/null; awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}'; }

one() { # $1 = tls|plain, $2 = run
  local flag=() mode=$1 r=$2
  [ "$mode" = plain ] && flag=(--no-tls)
  "$bv" cluster up --nodes 4 --replicas 2 --dir "$work/c" --mount "$work/m" "${flag[@]}" >"$work/up.out"
  export BLOBVIRT_CLUSTER_DIR="$work/c" BLOBVIRT_CONTROL
  BLOBVIRT_CONTROL=$(sed -n 's/^BLOBVIRT_CONTROL=//p' "$work/up.out")
  local t
  t=$(secs "$bv" vol-import "$img" vol); echo "$r $mode import $t" >>"$results"
  drop
  t=$(secs "$bv" vol-export vol "$work/out.raw"); echo "$r $mode export $t" >>"$results"
  cmp -s "$img" "$work/out.raw" || { echo "tls-cost: export differs" >&2; exit 1; }
  rm -f "$work/out.raw"
  drop
  t=$(secs dd if="$work/m/vol" of=/dev/null bs=1M iflag=direct status=none)
  echo "$r $mode cold-read $t" >>"$results"
  "$bv" cluster down --force --purge --dir "$work/c" >/dev/null
  unset BLOBVIRT_CLUSTER_DIR BLOBVIRT_CONTROL
}

for r in $(seq "$runs"); do
  if [ $((r % 2)) = 1 ]; then order=(tls plain); else order=(plain tls); fi
  for m in "${order[@]}"; do one "$m" "$r"; done
  grep "^$r " "$results" >&2
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "| ${size} MiB, ${runs} runs | plain s (median) | TLS s (median) | TLS/plain (median of per-run ratios) | TLS MiB/s |"
echo "| --- | --- | --- | --- | --- |"
for op in import export cold-read; do
  p=$(awk -v o="$op" '$2=="plain" && $3==o {print $4}' "$results" | median)
  t=$(awk -v o="$op" '$2=="tls" && $3==o {print $4}' "$results" | median)
  ratio=$(awk -v o="$op" '$3==o {v[$1" "$2]=$4} END {for (k in v) {split(k,a," "); if (a[2]=="tls") print v[k]/v[a[1]" plain"]}}' "$results" | median)
  printf '| %s | %.2f | %.2f | %.2f | %.0f |\n' "$op" "$p" "$t" "$ratio" "$(awk -v s="$size" -v t="$t" 'BEGIN {print s / t}')"
done
