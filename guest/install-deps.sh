#!/usr/bin/env bash
# Installs what guest/build-guest.sh, guest/boot-test.sh and
# guest/read-marker.sh need on Debian 12, as root. Idempotent: when every
# package is already installed it does nothing (no apt-get update).
#
# The guest kernel (linux-image-cloud-amd64) is NOT installed on the host:
# build-guest.sh downloads it with `apt-get download` and unpacks it in a
# temporary directory.
set -euo pipefail

need_pkgs=(
  busybox-static   # the guest's userland (copied into the initramfs)
  extlinux         # boot loader installed into the guest's ext4 partition
  syslinux-common  # mbr.bin (MBR boot code)
  e2fsprogs        # mke2fs -d, debugfs (read-marker.sh, stay switch)
  fdisk            # sfdisk (partition table)
  util-linux       # losetup, mount
  cpio             # initramfs archive
  kmod             # modinfo (module dependencies)
  xz-utils         # decompress .ko.xz modules
  zstd             # decompress .ko.zst modules
  qemu-system-x86  # boot-test.sh
)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: all packages present"
fi
