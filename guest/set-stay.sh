#!/usr/bin/env bash
# Switches the blobvirt test guest's "stay" mode in an image, without booting
# or rebuilding it: creates or removes /blobvirt/stay with `debugfs -w` at the
# partition offset. With the file present the guest stays up after writing
# its marker and writes /blobvirt/ticks every second; without it the guest
# powers off. Also sets or clears the fallback name (/blobvirt/name).
# Never use it on an image a running guest has open. If the guest was killed,
# its journal is replayed into the image first (e2fsck -E journal_only).
#
# usage: guest/set-stay.sh IMAGE on|off
#        guest/set-stay.sh IMAGE name NAME|--clear
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=guest/lib.sh
. "$here/lib.sh"

usage() { echo "usage: $0 IMAGE on|off   or   $0 IMAGE name NAME|--clear" >&2; exit 2; }
[ $# -ge 2 ] || usage
image=$1
[ -f "$image" ] || [ -b "$image" ] || { echo "error: image $image does not exist" >&2; exit 2; }
spec=$(fs_spec "$image") || exit 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# debugfs ignores the journal: after a killed guest, replay it first, or the
# next mount would replay old metadata over our change.
if needs_recovery "$spec"; then replay_journal "$image" "$(part_offset "$image")" || exit 1; fi

# put_file GUESTPATH CONTENT / del_file GUESTPATH (idempotent)
del_file() { debugfs -w -R "rm $1" "$spec" >/dev/null 2>&1 || true; }
put_file() {
  del_file "$1"
  printf '%s\n' "$2" >"$tmp/f"
  debugfs -w -R "write $tmp/f $1" "$spec" >/dev/null 2>"$tmp/err"
  "$here/read-marker.sh" "$image" "$1" >/dev/null 2>&1 ||
    { cat "$tmp/err" >&2; echo "error: could not write $1 into $image" >&2; exit 1; }
}

case "$2" in
  on) [ $# = 2 ] || usage; put_file /blobvirt/stay 1 ;;
  off) [ $# = 2 ] || usage; del_file /blobvirt/stay ;;
  name)
    [ $# = 3 ] || usage
    if [ "$3" = --clear ]; then del_file /blobvirt/name; else put_file /blobvirt/name "$3"; fi
    ;;
  *) usage ;;
esac
