#!/usr/bin/env bash
# Builds blobvirt and runs every test: unit, property, and integration tests
# that start the real daemons (poold, chunkd, mirrord with a FUSE mount),
# then the Debian packages (packaging/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The libvirt and guest tests need libvirtd/virtlogd, QEMU and the guest
# image's packages.
bash guest/install-deps.sh
bash scripts/libvirt-setup.sh
# The emulated-cluster harness test runs the baselines' tools (socat, curl,
# busybox httpd, qemu-nbd, qemu-storage-daemon).
bash bench/cluster/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The OpenNebula driver scripts pass ShellCheck.
shellcheck -x packaging/opennebula/remotes/datastore/blobvirt/* \
  packaging/opennebula/remotes/tm/blobvirt/* \
  packaging/opennebula/opennebula.conf
cargo build --workspace --bins --tests
cargo test --workspace -- --test-threads="${BLOBVIRT_TEST_THREADS:-2}"
# The Debian packages: release build, cargo-deb, lintian, install, upgrade,
# remove, purge (restores the hook and /etc/blobvirt the tests above use).
bash packaging/test.sh
