#!/usr/bin/env bash
# Issue 10: recovery throughput. 6 chunkd nodes, replicas 2, MIB of volumes
# (3 volumes plus a second version of one); SIGKILL one chunkd for good and
# time until a checker that asks every live chunkd (Has) finds 2 replicas
# of every referenced chunk; then SIGKILL a second one and check that every
# version exports byte-identical. The out time is 3 s, the copy bandwidth
# unlimited (--recovery-mbps 0). This is the CI test
# pool-backend/tests/heal.rs::a_dead_node_is_replaced_and_a_second_death_loses_nothing
# with HEAL_MIB, built with --release. Prints each run's line and the
# median throughput (MiB copied / seconds after the out time), and cp +
# sync of as many bytes on the same disk as the baseline.
#
# usage: bash bench/heal.sh [RUNS (3)] [MIB (2048)]   as root
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
runs=${1:-3}
mib=${2:-2048}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$runs"); do
  HEAL_MIB=$mib cargo test -q --release -p pool-backend --test heal -- --nocapture --exact \
    a_dead_node_is_replaced_and_a_second_death_loses_nothing 2>&1 | grep '^recovery:' | tee -a "$out"
done
# Baseline on the same disk: cp + sync of as many bytes as were copied.
copied=$(grep -o '([0-9]* MiB)' "$out" | head -1 | tr -dc 0-9)
work=$(mktemp -d /var/tmp/blobvirt-heal-XXXXXX)
trap 'rm -f "$out"; rm -rf "$work"' EXIT
head -c "$((copied * 1048576))" /dev/urandom > "$work/src"
sync
for i in $(seq "$runs"); do
  rm -f "$work/dst"
  secs=$(python3 -c 'import subprocess, sys, time
t = time.monotonic(); subprocess.run(["cp", sys.argv[1], sys.argv[2]], check=True); subprocess.run(["sync"], check=True)
print(f"{time.monotonic() - t:.2f}")' "$work/src" "$work/dst")
  echo "cp+sync: $copied MiB in $secs s" | tee -a "$out"
done
python3 - "$out" <<'PY'
import re, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
rates = [float(m.group(1)) for l in lines if (m := re.search(r': (\d+) MiB/s after it', l))]
secs = [float(m.group(1)) for l in lines if (m := re.search(r'in ([\d.]+) s after the kill', l))]
cp = [(float(m.group(1)), float(m.group(2))) for l in lines if (m := re.search(r'cp\+sync: (\d+) MiB in ([\d.]+) s', l))]
cpr = statistics.median(mib / s for mib, s in cp)
rate = statistics.median(rates)
print(f"runs {len(rates)}: recovery median {rate:.0f} MiB/s (range {min(rates):.0f}-{max(rates):.0f}); "
      f"healed a median {statistics.median(secs):.1f} s after the kill; cp+sync of the same bytes "
      f"{cpr:.0f} MiB/s; ratio {rate / cpr:.2f}")
PY
