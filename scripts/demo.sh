#!/usr/bin/env bash
# The main job, end to end on one machine: a local blobvirt cluster
# (poold + 4 chunkd), an image imported, changed and re-imported as a new
# version, cloned, exported and checked, and a summary printed.
# Usage: bash scripts/demo.sh [WORKDIR]   (KEEP=1 leaves the cluster running)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
bin="$PWD/target/release"
work="${1:-/var/tmp/blobvirt-demo}"
mkdir -p "$work"
"$bin/blobvirt" cluster down --dir "$work/cluster" >/dev/null 2>&1 || true
rm -rf "$work/cluster"

cleanup() { [ "${KEEP:-0}" = 1 ] || "$bin/blobvirt" cluster down --dir "$work/cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== starting a 4-node cluster in $work/cluster"
"$bin/blobvirt" cluster up --nodes 4 --replicas 2 --dir "$work/cluster" | tee "$work/up.out"
export BLOBVIRT_POOL="$(tail -n 1 "$work/up.out" | cut -d= -f2-)"

echo "== making a 256 MiB image: random data with 64 MiB of holes"
img="$work/image.raw"
python3 - "$img" <<'PY'
import os, sys
MiB = 1 << 20
with open(sys.argv[1], "wb") as f:
    for i in range(256):
        f.write(b"\0" * MiB if 96 <= i < 160 else os.urandom(MiB))
PY

echo "== import, change 4 MiB, import as version 2, clone, export"
"$bin/blobvirt" vol-import "$img" base
python3 - "$img" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    for off in (3, 50, 170, 250):
        f.seek(off << 20); f.write(os.urandom(1 << 20))
PY
"$bin/blobvirt" vol-import --new-version "$img" base
"$bin/blobvirt" vol-clone base@2 web-01
"$bin/blobvirt" vol-export web-01 "$work/web-01.raw"
"$bin/blobvirt" vol-list
want=$(sha256sum < "$img" | cut -d' ' -f1)
got=$(sha256sum < "$work/web-01.raw" | cut -d' ' -f1)
"$bin/blobvirt" cluster status
echo
if [ "$want" = "$got" ]; then
  echo "summary: web-01 (a clone of base@2) exports byte-identical to the image (sha256 $want)"
  echo "         $(du -sh --apparent-size "$work/web-01.raw" | cut -f1) apparent, $(du -sh "$work/web-01.raw" | cut -f1) on disk (holes stay sparse)"
else
  echo "summary: MISMATCH: image $want, export $got" >&2
  exit 1
fi
[ "${KEEP:-0}" = 1 ] && echo "the cluster keeps running: export BLOBVIRT_POOL=$BLOBVIRT_POOL; stop it with $bin/blobvirt cluster down --dir $work/cluster"
exit 0
