#!/usr/bin/env bash
# Issue 11: vol-import throughput through a whole local cluster (3 chunkd,
# replicas 2, TLS) with poold on redb and with poold on a 3-member etcd
# cluster (Debian's etcd-server, loopback, members on this machine's disk),
# alternating in the same run. Each run imports the same MIB of random data
# into a fresh cluster (etcd: a fresh key prefix). Prints every import and
# the medians, and the ratio per run.
#
# usage: bash bench/import-etcd.sh [RUNS (3)] [MIB (1024)]   as root
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
runs=${1:-3}
mib=${2:-1024}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
bv="$PWD/target/release/blobvirt"
work=$(mktemp -d /var/tmp/blobvirt-import-etcd-XXXXXX)
pids=()
down() {
  if [ -f "$work/c/cluster.json" ]; then
    "$bv" cluster down --force --purge --dir "$work/c" >/dev/null 2>&1 || true
  fi
  rm -rf "$work/c"
}
cleanup() {
  down
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
# Three etcd members on free loopback ports.
ports=$(python3 -c '
import socket
ss=[socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
read -r -a p <<<"$ports"
cluster="m0=http://127.0.0.1:${p[1]},m1=http://127.0.0.1:${p[3]},m2=http://127.0.0.1:${p[5]}"
eps="http://127.0.0.1:${p[0]},http://127.0.0.1:${p[2]},http://127.0.0.1:${p[4]}"
for i in 0 1 2; do
  c=${p[$((2 * i))]} q=${p[$((2 * i + 1))]}
  /usr/bin/etcd --name "m$i" --data-dir "$work/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$q" --initial-advertise-peer-urls "http://127.0.0.1:$q" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --max-txn-ops 8192 --max-request-bytes 8388608 \
    --auto-compaction-mode periodic --auto-compaction-retention 10m \
    >"$work/etcd-$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do
  c=${p[$((2 * i))]}
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$c/health" | grep -q '"health":"true"' && break
    sleep 0.2
  done
done
head -c "$((mib << 20))" /dev/urandom >"$work/img"
for r in $(seq 1 "$runs"); do
  for engine in redb etcd; do
    extra=()
    [ "$engine" = etcd ] && extra=(--etcd-endpoints "$eps" --etcd-prefix "/bench-$r/")
    "$bv" cluster up --dir "$work/c" --nodes 3 --engine "$engine" "${extra[@]}" >/dev/null
    sync
    t0=$(date +%s.%N)
    BLOBVIRT_CLUSTER_DIR="$work/c" "$bv" vol-import "$work/img" v >/dev/null
    t1=$(date +%s.%N)
    down
    echo "run $r $engine $(python3 -c "print(f'{$t1 - $t0:.3f}')")"
  done
done | tee "$work/times"
python3 - "$work/times" "$mib" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
mib = int(sys.argv[2])
t = {e: [float(x[3]) for x in rows if x[2] == e] for e in ("redb", "etcd")}
ratio = [e / r for r, e in zip(t["redb"], t["etcd"])]
for e in ("redb", "etcd"):
    m = statistics.median(t[e])
    print(f"{e}: median {m:.2f} s ({mib / m:.0f} MiB/s), min {min(t[e]):.2f}, max {max(t[e]):.2f}")
print(f"etcd / redb time: median {statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}), {len(ratio)} runs")
PY
