#!/usr/bin/env bash
# The main job, end to end on one machine, as root:
#   1. a local blobvirt cluster (poold + 4 chunkd) with mirrord mounted, a
#      libvirt pool on the mount and the libvirt hook installed;
#   2. the repository in short: an image imported, cloned, exported, checked;
#   3. the test guest built from Debian packages and imported;
#   4. 4 domains deployed from it (4 O(1) clones) and booted under libvirt;
#   5. all 4 snapshotted at once (pause, COMMIT phase 1 each, resume, phase 2);
#   6. one snapshot exported as a plain raw file and booted by plain QEMU;
#   7. a summary.
# Usage: bash scripts/demo.sh [WORKDIR]   (KEEP=1 leaves everything running;
#        POOL_NAME=… picks the libvirt pool name, default blobvirt)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=lib.sh
source scripts/lib.sh
prepare_libvirt_host
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
bin="$root/target/release"
bv="$bin/blobvirt"
work="${1:-/var/tmp/blobvirt-demo}"
pool="${POOL_NAME:-blobvirt}"
n=4
prefix=demo
mkdir -p "$work"

domains() { virsh -q list --all --name | grep -E "^$prefix-[0-9]+\$" || true; }
stop_all() {
  for d in $(domains); do
    virsh -q destroy "$d" >/dev/null 2>&1 || true
    virsh -q undefine "$d" --snapshots-metadata >/dev/null 2>&1 || true
  done
  "$bv" cluster down --force --dir "$work/cluster" >/dev/null 2>&1 || true
}
stop_all
rm -rf "$work/cluster" "$work/export" "$work/logs"
mkdir -p "$work/logs"
cleanup() { [ "${KEEP:-0}" = 1 ] || stop_all; }
trap cleanup EXIT

echo "== 1. a 4-node cluster, mirrord on $work/mnt, libvirt pool $pool, hook"
"$bv" cluster up --nodes 4 --replicas 2 --dir "$work/cluster" --mount "$work/mnt" \
  --libvirt --libvirt-pool "$pool" | tee "$work/up.out"
export BLOBVIRT_POOL="$(sed -n 's/^BLOBVIRT_POOL=//p' "$work/up.out")"
export BLOBVIRT_CONTROL="$(sed -n 's/^BLOBVIRT_CONTROL=//p' "$work/up.out")"
export BLOBVIRT_CONFIG="$work/cluster/blobvirt.toml"   # the cluster's own CA and certificate

echo "== 2. repository: import a 64 MiB image with holes, clone, export, compare"
python3 - "$work/image.raw" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    for i in range(64):
        f.write(b"\0" * (1 << 20) if 16 <= i < 40 else os.urandom(1 << 20))
PY
"$bv" vol-import "$work/image.raw" base
"$bv" vol-clone base web-01
"$bv" vol-export web-01 "$work/web-01.raw"
cmp "$work/image.raw" "$work/web-01.raw"
repo_ok="web-01 (a clone of base@1) exports byte-identical to the image"

echo "== 3. the test guest (stay mode: it keeps running and ticks every second)"
guest/build-guest.sh "$work/guest.raw" >/dev/null
guest/set-stay.sh "$work/guest.raw" on
"$bv" vol-import "$work/guest.raw" guest

echo "== 4. deploy $n domains from guest"
sed -e "s/pool='blobvirt'/pool='$pool'/" -e "s|CONSOLE_LOG|$work/logs/TEMPLATE.log|" \
  guest/domain-template.xml > "$work/template.xml"
"$bv" deploy guest --count "$n" --template "$work/template.xml" --name-prefix "$prefix" \
  | tee "$work/deploy.out"
echo "   waiting until every guest has written 2 ticks to its own clone"
for i in $(seq 1 "$n"); do
  for _ in $(seq 1 240); do
    t=$(guest/read-marker.sh "$work/mnt/$prefix-$i" ticks 2>/dev/null || echo 0)
    [ "${t:-0}" -ge 2 ] && break
    sleep 0.5
  done
  echo "   $prefix-$i: $(guest/read-marker.sh "$work/mnt/$prefix-$i" marker), $t ticks"
done

echo "== 5. snapshot all $n running domains at once"
"$bv" snapshot-create-all --prefix "$prefix-" --name demo-snap | tee "$work/snap.out"
virsh snapshot-list "$prefix-1"
"$bv" snapshot-list "$prefix-1"

echo "== 6. export $prefix-1's snapshot and boot it with plain QEMU (no blobvirt)"
"$bv" snapshot-export "$prefix-1" demo-snap "$work/export"
snap_marker=$(guest/read-marker.sh "$work/export/vda.raw" marker)
snap_ticks=$(guest/read-marker.sh "$work/export/vda.raw" ticks)
guest/boot-test.sh --serial plainqemu --stay 2 -q "$work/export/vda.raw" | tee "$work/boot.out"
after=$(guest/read-marker.sh "$work/export/vda.raw" marker)

fetched=$("$bv" mirror-status --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
vols = v["volumes"] if isinstance(v, dict) else v
print(sum(x["bytes_fetched"] for x in vols if x["name"].startswith("'"$prefix"'-")))')
# Network traffic: mirrord's fetches from chunkd (the host's chunk cache
# serves a chunk that another clone here fetched already).
maddr=$(python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
print(next(p["metrics"] for p in c["processes"] if p["name"] == "mirrord"))' "$work/cluster/cluster.json")
net=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(f"http://{sys.argv[1]}/metrics").read().decode())' "$maddr" \
  | awk '$1 == "blobvirt_mirrord_fetched_bytes_total" {printf "%d", $2}')
echo
echo "== summary"
echo "repository:  $repo_ok"
echo "deploy:      $(tail -n 1 "$work/deploy.out")"
echo "             the $n mirrors read $((fetched >> 20)) MiB, of which $((net >> 20)) MiB came over the network (image: 64 MiB, $n x image = $((n * 64)) MiB)"
echo "snapshot:    $(grep '^snapshot demo-snap' "$work/snap.out" || tail -n 1 "$work/snap.out")"
echo "export:      $prefix-1@demo-snap holds '$snap_marker' with $snap_ticks ticks"
echo "plain QEMU:  booted the export: marker now '$after' ($(grep -o 'qemu ran [0-9.]* s' "$work/boot.out" | head -1))"
if [ "${KEEP:-0}" = 1 ]; then
  echo "everything keeps running: export BLOBVIRT_POOL=$BLOBVIRT_POOL BLOBVIRT_CONTROL=$BLOBVIRT_CONTROL BLOBVIRT_CONFIG=$BLOBVIRT_CONFIG"
  echo "stop with: for d in \$(virsh list --all --name | grep ^$prefix-); do virsh destroy \$d; virsh undefine \$d --snapshots-metadata; done; $bv cluster down --dir $work/cluster"
fi
exit 0
