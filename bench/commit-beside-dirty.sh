#!/usr/bin/env bash
# Issue 14: how long a COMMIT takes on a host whose disk also holds a
# guest's dirty data, with chunkd's Flush syncing only its own files
# (default, --durability per-put) or the whole file system with syncfs
# (CHUNKD_DURABILITY=syncfs, which is what Flush did in both modes before).
#
# Per run and per mode, alternately, on a fresh local cluster (4 nodes,
# replicas 2, mirrord mounted; every daemon's directory on the work disk):
# import a 256 MiB random volume, write 15 MiB to it through the mount
# (60 scattered 256 KiB O_DIRECT writes, the file kept open), then let a
# "guest" dirty DIRTY_MIB
# of page cache in a file on the same file system (dd, no sync) and time
# `blobvirt commit` right after. Prints each time and the medians.
#
# usage: bash bench/commit-beside-dirty.sh [RUNS (3)] [DIRTY_MIB (3072)]   as root
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
root=$PWD
runs=${1:-3}
dirty_mib=${2:-3072}
[ "$(id -u)" = 0 ] || { echo "commit-beside-dirty.sh: must run as root (FUSE mount); rerun with sudo" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
bv="$root/target/release/blobvirt"
work=$(mktemp -d /var/tmp/blobvirt-commitdirty-XXXXXX)

teardown() {
  if [ -f "$work/cluster/cluster.json" ]; then
    "$bv" cluster down --force --dir "$work/cluster" >/dev/null 2>&1 || true
  fi
  rm -rf "$work/cluster" "$work/guest-dirty"
}
trap 'teardown; rm -rf "$work"' EXIT

head -c $((256 << 20)) /dev/urandom >"$work/img.raw"

# one MODE: prints the seconds of one COMMIT beside DIRTY_MIB of dirty data.
one() {
  local mode=$1 f t0 t1 i
  mkdir -p "$work/mnt"
  CHUNKD_DURABILITY=$mode "$bv" cluster up --dir "$work/cluster" --nodes 4 --replicas 2 \
    --mount "$work/mnt" >/dev/null
  export BLOBVIRT_CLUSTER_DIR="$work/cluster"
  "$bv" vol-import "$work/img.raw" vol >/dev/null
  f="$work/mnt/vol"
  for _ in $(seq 100); do [ -e "$f" ] && break; sleep 0.1; done
  # The writer keeps the volume open until the COMMIT is done: mirrord
  # commits a volume when its last writer closes it (the default policy).
  python3 - "$f" "$work/written" <<'PY' &
import mmap, os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 256 << 10)
rnd = random.Random(7)
for i in range(60):
    buf[:] = rnd.randbytes(256 << 10)
    os.pwrite(fd, buf, ((i * 17) % 1024) * (256 << 10))
open(sys.argv[2], "w").close()
time.sleep(600)
PY
  writer=$!
  for _ in $(seq 300); do [ -e "$work/written" ] && break; sleep 0.1; done
  [ -e "$work/written" ] || { echo "the writer did not finish its writes" >&2; exit 1; }
  dd if=/dev/zero of="$work/guest-dirty" bs=4M count=$((dirty_mib / 4)) status=none
  t0=$(date +%s.%N)
  "$bv" commit vol >/dev/null
  t1=$(date +%s.%N)
  kill "$writer"
  wait "$writer" 2>/dev/null || true
  rm -f "$work/written"
  teardown
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

declare -a own=() whole=()
for r in $(seq "$runs"); do
  a=$(one per-put)
  b=$(one syncfs)
  own+=("$a")
  whole+=("$b")
  echo "run $r: commit beside ${dirty_mib} MiB dirty: Flush of its own files ${a} s, Flush with syncfs ${b} s"
done
python3 - "${own[*]}" "${whole[*]}" <<'EOF'
import statistics, sys
own = [float(x) for x in sys.argv[1].split()]
whole = [float(x) for x in sys.argv[2].split()]
m_own, m_whole = statistics.median(own), statistics.median(whole)
print(f"median: own files {m_own:.3f} s ({min(own):.3f}-{max(own):.3f}), "
      f"syncfs {m_whole:.3f} s ({min(whole):.3f}-{max(whole):.3f}), syncfs / own = {m_whole / m_own:.2f}")
EOF
