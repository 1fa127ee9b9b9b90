#!/usr/bin/env bash
# Issue 11: fail-over under load on three emulated hosts, RUNS times: the
# test virsh-ext/tests/ha_hosts.rs (etcd member on each host with TLS, poold
# active on host 1 and standby on host 2, chunkd on each, mirrord on host 3;
# publishes on host 1 and mirror commits on host 3 all along; the active
# poold SIGKILLed, then etcd's leader). Prints per run: how long after the
# kill the standby answered, failed requests, and the longest wait between
# two acknowledgements of each stream around each fault; then the medians.
#
# usage: bash bench/failover.sh [RUNS (5)]   as root
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
runs=${1:-5}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --bins --tests
out=$(mktemp /tmp/blobvirt-failover-XXXXXX)
trap 'rm -f "$out" "$out.all"' EXIT
for r in $(seq 1 "$runs"); do
  cargo test -q -p virsh-ext --test ha_hosts -- --nocapture >"$out" 2>&1 || {
    cat "$out"
    echo "run $r failed" >&2
    exit 1
  }
  python3 - "$r" "$out" <<'PY'
import re, sys
run, text = sys.argv[1], open(sys.argv[2]).read()
def secs(s):
    m = re.match(r"([0-9.]+)(ms|µs|s)", s)
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "ms" else v / 1e6 if m.group(2) == "µs" else v
take = secs(re.search(r"standby poold answered (\S+) after", text).group(1))
rows = re.findall(r"(\w+): (\d+) versions acknowledged, (\d+) requests failed; longest wait between two acknowledgements (\S+) around the poold kill, (\S+) around the etcd", text)
cells = [f"{n}: {a} acked, {f} failed, {secs(p):.2f} s / {secs(e):.2f} s" for n, a, f, p, e in rows]
print(f"run {run}: takeover {take:.2f} s; " + "; ".join(cells))
print(f"DATA {take} " + " ".join(f"{secs(p)} {secs(e)}" for _, _, _, p, e in rows))
PY
done | tee -a "$out.all" | grep -v '^DATA'
python3 - "$out.all" <<'PY'
import statistics, sys
rows = [list(map(float, l.split()[1:])) for l in open(sys.argv[1]) if l.startswith("DATA")]
med = [statistics.median(c) for c in zip(*rows)]
print(f"medians of {len(rows)}: takeover {med[0]:.2f} s; longest wait around the poold kill "
      f"{med[1]:.2f} s (publishes) / {med[3]:.2f} s (commits); around the etcd leader's loss "
      f"{med[2]:.2f} s / {med[4]:.2f} s")
PY
