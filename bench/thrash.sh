#!/usr/bin/env bash
# Issue 10: the fault thrasher with KILLS SIGKILLs (CI runs 20). Two
# mirrords write randomly with fsyncs and commits, a third client imports
# and deletes volumes, and a driver kills a random chunkd, poold or mirrord
# every 1.25-3.75 s and starts it again; then every check of
# testbed/src/harness/thrash.rs and a clean `blobvirt fsck`. This is
# virsh-ext/tests/thrash.rs with THRASH_KILLS and THRASH_SEED, built with
# --release. Prints the kill log and the report.
#
# usage: bash bench/thrash.sh [KILLS (100)] [SEED (1)]   as root (FUSE)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
kills=${1:-100}
seed=${2:-1}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
THRASH_KILLS=$kills THRASH_SEED=$seed cargo test -q --release -p virsh-ext --test thrash -- --nocapture 2>&1 \
  | grep -E '^thrash|^ +[a-z0-9_"-]+: |^test |^test result|panicked|ThrashReport|^}'
