#!/usr/bin/env bash
# Multisnapshotting benchmark: N running test-guest domains (stay mode, each
# syncing a tick to its own clone every second), then ROUNDS times
# `blobvirt snapshot-create-all` over all of them. Prints per round the
# median and max of the per-domain pause time and time to durable, then
# the same over all rounds. Root; uses release binaries; cleans up unless
# KEEP=1.
# Usage: bash bench/snapshot-all.sh [N=8] [ROUNDS=5] [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-8}
rounds=${2:-5}
work=${3:-/var/tmp/blobvirt-bench-snap}
pool=bvbench
prefix=bsnap
bash scripts/libvirt-setup.sh >/dev/null
# See scripts/demo.sh: libvirt re-probes QEMU on every define otherwise.
[ -e /dev/kvm ] && chown root:kvm /dev/kvm && chmod 0660 /dev/kvm
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins >/dev/null 2>&1
bv="$PWD/target/release/blobvirt"

stop_all() {
  for d in $(virsh -q list --all --name | grep -E "^$prefix-[0-9]+\$" || true); do
    virsh -q destroy "$d" >/dev/null 2>&1 || true
    virsh -q undefine "$d" --snapshots-metadata >/dev/null 2>&1 || true
  done
  "$bv" cluster down --dir "$work/cluster" >/dev/null 2>&1 || true
}
stop_all
rm -rf "$work/cluster"
mkdir -p "$work/logs"
cleanup() { [ "${KEEP:-0}" = 1 ] || stop_all; }
trap cleanup EXIT

"$bv" cluster up --nodes 4 --replicas 2 --dir "$work/cluster" --mount "$work/mnt" \
  --libvirt --libvirt-pool "$pool" > "$work/up.out"
export BLOBVIRT_POOL="$(sed -n 's/^BLOBVIRT_POOL=//p' "$work/up.out")"
export BLOBVIRT_CONTROL="$(sed -n 's/^BLOBVIRT_CONTROL=//p' "$work/up.out")"
export BLOBVIRT_CONFIG="$work/cluster/blobvirt.toml"   # the cluster's own CA and certificate
guest/build-guest.sh "$work/guest.raw" >/dev/null
guest/set-stay.sh "$work/guest.raw" on
"$bv" vol-import "$work/guest.raw" guest >/dev/null
sed -e "s/pool='blobvirt'/pool='$pool'/" -e "s|CONSOLE_LOG|$work/logs/TEMPLATE.log|" \
  guest/domain-template.xml > "$work/template.xml"
"$bv" deploy guest --count "$n" --template "$work/template.xml" --name-prefix "$prefix"
for i in $(seq 1 "$n"); do
  for _ in $(seq 1 480); do
    t=$(guest/read-marker.sh "$work/mnt/$prefix-$i" ticks 2>/dev/null || echo 0)
    [ "${t:-0}" -ge 3 ] && break
    sleep 0.5
  done
done
echo "host: $(nproc) cores, $n domains running (TCG), snapshot-create-all x $rounds"
: > "$work/all.json"
for r in $(seq 1 "$rounds"); do
  sleep 2   # let every guest write a few more ticks: each round has dirty chunks
  "$bv" snapshot-create-all --prefix "$prefix-" --name "round-$r" --json > "$work/round-$r.json"
  python3 - "$work/round-$r.json" "$r" <<'PY'
import json, statistics, sys
v = json.load(open(sys.argv[1]))
bad = [o["domain"] for o in v if not o["ok"]]
p = [o["paused_ms"] for o in v if o["ok"]]
d = [o["durable_ms"] for o in v if o["ok"]]
f = [o["freeze_us"] for o in v if o["ok"]]
print(f"round {sys.argv[2]}: {len(p)} ok {('failed: ' + ','.join(bad)) if bad else ''}"
      f" paused median {statistics.median(p):.1f} ms max {max(p):.1f} ms,"
      f" durable median {statistics.median(d):.1f} ms max {max(d):.1f} ms,"
      f" mirrord phase 1 median {statistics.median(f):.0f} us max {max(f):.0f} us")
PY
  cat "$work/round-$r.json" >> "$work/all.json"
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
p, d, f = [], [], []
for r in range(1, int(sys.argv[2]) + 1):
    for o in json.load(open(f"{sys.argv[1]}/round-{r}.json")):
        if o["ok"]:
            p.append(o["paused_ms"]); d.append(o["durable_ms"]); f.append(o["freeze_us"])
print(f"all rounds ({len(p)} domain snapshots): paused median {statistics.median(p):.1f} ms"
      f" max {max(p):.1f} ms; durable median {statistics.median(d):.1f} ms max {max(d):.1f} ms;"
      f" mirrord phase 1 median {statistics.median(f):.0f} us max {max(f):.0f} us")
PY
