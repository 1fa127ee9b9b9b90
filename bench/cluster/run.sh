#!/usr/bin/env bash
# Reproduces the paper's experiments (issue 5) on emulated nodes: installs
# what the baselines need, builds the release binaries, then runs
#   trace b: a synthetic boot set (8% of a 2 GiB image, clustered runs),
#            blobvirt, qcow2 over NBD, chain and HTTP prepropagation;
#   trace a: a real test-guest boot recorded through mirrord just now,
#            replayed against that 2 GiB guest image, blobvirt and qcow2
#            (and one run of the chain: prepropagation copies the whole
#            image whatever the trace).
# and writes tables and plots to OUT (default bench/results/emu).
#
# usage (root): bash bench/cluster/run.sh [--quick]
#   --quick    N = 1,4 and one run each (a smoke run of a few minutes)
# Environment: NODES (default 1,4,8,16,32), RUNS (3), HTTP_LARGE_RUNS (1:
#   runs of HTTP prepropagation at N >= 16, link-bound at N x 2 GiB / 1 Gbit/s),
#   DIR (/var/tmp/blobvirt-emu), OUT (bench/results/emu), SYSTEMS_B, SYSTEMS_A,
#   SLOW_DISK_MBPS (unset: throttle every node's disk I/O to this many MB/s,
#   blkio v1; results go to tables-LABEL-slowM.md), DISK_MBPS (unset: the
#   disk bandwidth of the per-node model; default: measured by each run).
# Everything the harness creates (namespaces, processes, mounts) is removed
# when it ends, also on failure or Ctrl-C; `blobvirt-bench emu-clean`
# removes what a killed run left.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root (network namespaces, FUSE); rerun with sudo" >&2; exit 1; }

nodes=${NODES:-1,4,8,16,32}
runs=${RUNS:-3}
http_large=${HTTP_LARGE_RUNS:-1}
if [ "${1:-}" = --quick ]; then nodes=1,4; runs=1; http_large=1; fi
dir=${DIR:-/var/tmp/blobvirt-emu}
out=${OUT:-bench/results/emu}

bash scripts/install-deps.sh
bash bench/cluster/install-deps.sh
cargo build --release -q --workspace --bins
bench=target/release/blobvirt-bench
mkdir -p "$dir" "$out"
# A slow-disk run adds to the records of the normal one.
[ -n "${SLOW_DISK_MBPS:-}" ] || rm -f "$out/results.jsonl"

disk=()
[ -n "${SLOW_DISK_MBPS:-}" ] && disk+=(--slow-disk-mbps "$SLOW_DISK_MBPS")
[ -n "${DISK_MBPS:-}" ] && disk+=(--disk-mbps "$DISK_MBPS")
common=(--nodes "$nodes" --runs "$runs" --dir "$dir" --out "$out" "${disk[@]}")

# Trace b without HTTP first: these systems are CPU-bound on this machine.
"$bench" emu "${common[@]}" --label b --systems "${SYSTEMS_B:-blobvirt,qcow2-nbd,prepro-chain}"

# Trace a: record a real boot, keep the image it was recorded on.
if [ ! -s "$dir/guest-boot.trace" ] || [ ! -s "$dir/guest-2048.raw" ]; then
  IMAGE_OUT="$dir/guest-2048.raw" bash bench/cluster/record-boot-trace.sh "$dir/guest-boot.trace" 2048
fi
"$bench" emu "${common[@]}" --label a --image "$dir/guest-2048.raw" --trace "$dir/guest-boot.trace" \
  --systems "${SYSTEMS_A:-blobvirt,qcow2-nbd}"

# HTTP prepropagation last: it is bound by the server's link, not the CPU.
"$bench" emu "${common[@]}" --label b --systems prepro-http --http-large-runs "$http_large"

# Prepropagation copies the whole image whatever the trace: one run of the
# chain for trace a shows it.
"$bench" emu --nodes "$nodes" --runs 1 --dir "$dir" --out "$out" "${disk[@]}" --label a \
  --image "$dir/guest-2048.raw" --trace "$dir/guest-boot.trace" --systems prepro-chain

# blobvirt with one replica (what the qcow2 server keeps), for the snapshot.
if [ "${1:-}" != --quick ]; then
  "$bench" emu --nodes 1,32 --runs "$runs" --dir "$dir" --out "$out" "${disk[@]}" --label b-r1 --replicas 1 --systems blobvirt
fi

"$bench" emu-report --out "$out" >/dev/null
echo "run.sh: tables and plots in $out"
