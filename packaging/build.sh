#!/usr/bin/env bash
# Builds blobvirt's Debian packages into target/debian/ (cargo-deb's
# default): blobvirt, blobvirt-poold, blobvirt-chunkd, blobvirt-mirrord,
# blobvirt-opennebula.
# Works on a fresh Debian 12 with Rust from rustup; as root it installs what
# is missing (the build's Debian packages via scripts/install-deps.sh,
# dpkg-dev, cargo-deb).
#
#   bash packaging/build.sh     # prints the paths of the .deb files last
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# pkg-config and libvirt-dev (the CLI links libvirt), cargo on PATH.
bash scripts/install-deps.sh
# dpkg-shlibdeps computes the $auto dependencies; binutils strips.
missing=()
for p in dpkg-dev binutils; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 update -qq
  apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb"
  cargo install cargo-deb --locked --version '^3.8'
fi

# The daemon packages pin `blobvirt (= VERSION-1)`; cargo-deb cannot
# substitute it, so a version bump must update the pins and the changelog.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
want="$version-1"
for f in pool-backend/Cargo.toml chunkd/Cargo.toml mirrord/Cargo.toml virsh-ext/Cargo.toml; do
  if ! grep -q "blobvirt (= $want)" "$f"; then
    echo "error: $f does not depend on blobvirt (= $want); update its [package.metadata.deb] depends" >&2
    exit 1
  fi
done
if [ "$(head -1 packaging/debian/changelog)" != "blobvirt ($want) unstable; urgency=medium" ]; then
  echo "error: packaging/debian/changelog does not start with version $want; add an entry" >&2
  exit 1
fi

# One release build of the five binaries, then package without rebuilding
# (the blobvirt package takes blobvirt-hook from another crate).
cargo build --release -p pool-backend -p chunkd -p mirrord -p virsh-ext -p libvirt-hook --bins
out=target/debian
mkdir -p "$out"
rm -f "$out"/blobvirt*.deb
for crate in virsh-ext pool-backend chunkd mirrord; do
  cargo deb --no-build -p "$crate" --output "$out/"
done
# The OpenNebula drivers (scripts only): a variant of the CLI's crate.
cargo deb --no-build -p virsh-ext --variant opennebula --output "$out/"

ls -1 "$out"/blobvirt*.deb
