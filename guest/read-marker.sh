#!/usr/bin/env bash
# Prints a file from the blobvirt test guest's ext4 partition without booting
# or mounting it (debugfs on the image at the partition offset; read-only, no
# root needed). Works on any raw image built by guest/build-guest.sh, also on
# a copy exported from blobvirt.
#
# usage: guest/read-marker.sh IMAGE [FILE]
#   FILE defaults to "marker"; a relative FILE is taken under /blobvirt
#   (boots, marker, log, ticks, stay, name), an absolute one from the fs root.
# If the guest is running or was killed (journal not replayed), the journal
# is replayed on a temporary copy of the partition; the image is not changed.
# exit status: 0 and the file's content on stdout; 1 if the file does not
# exist; 2 on usage or image errors.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=guest/lib.sh
. "$here/lib.sh"

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 IMAGE [FILE (default marker)]" >&2; exit 2; }
image=$1
[ -f "$image" ] || [ -b "$image" ] || { echo "error: image $image does not exist" >&2; exit 2; }
command -v debugfs >/dev/null || { echo "error: debugfs is missing; run guest/install-deps.sh" >&2; exit 2; }
path=$(guest_path "${2:-marker}")
spec=$(fs_spec "$image") || exit 2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
err=$tmp/err
if needs_recovery "$spec"; then
  # Running or killed guest: replay the journal on a sparse copy of the
  # partition, never on the image itself, and read from the copy.
  off=$(part_offset "$image")
  dd if="$image" of="$tmp/part" bs=1M iflag=skip_bytes skip="$off" conv=sparse status=none
  replay_journal "$tmp/part" || exit 2
  spec=$tmp/part
fi
debugfs -R "cat $path" "$spec" 2>"$err"
if grep -q 'not found' "$err"; then
  echo "error: $path does not exist in the guest file system of $image" >&2
  exit 1
fi
if grep -qiE 'bad magic|while (opening|trying)|corrupt|short read' "$err"; then
  sed '/^debugfs [0-9]/d' "$err" >&2
  echo "error: cannot read the guest file system of $image" >&2
  exit 2
fi
