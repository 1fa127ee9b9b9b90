#!/usr/bin/env bash
# End-to-end check of the test guest, with plain QEMU (TCG): build a fresh
# image, boot it twice (boots=1, boots=2), run it in stay mode and stop it
# with the ACPI power button, again and kill QEMU, boot once more (boots=5),
# and check the file system. Prints timings. Needs root.
#
# usage: guest/selftest.sh [WORKDIR]   (default: a temporary directory)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -ge 1 ]; then dir=$1; mkdir -p "$dir"; keep=1; else dir=$(mktemp -d); keep=0; fi
trap '[ "$keep" = 1 ] || rm -rf "$dir"' EXIT
img=$dir/guest.raw
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

t=$(now); "$here/build-guest.sh" "$img"; echo "selftest: build $(since "$t") s"
t=$(now); "$here/boot-test.sh" -q --expect-boots 1 "$img"; echo "selftest: boot 1 $(since "$t") s"
t=$(now); "$here/boot-test.sh" -q --expect-boots 2 "$img"; echo "selftest: boot 2 $(since "$t") s"
"$here/boot-test.sh" -q --expect-boots 3 --stay 3 --stop acpi "$img"
"$here/boot-test.sh" -q --expect-boots 4 --stay 3 --stop kill "$img"
"$here/boot-test.sh" -q --expect-boots 5 "$img"
if "$here/read-marker.sh" "$img" stay >/dev/null 2>&1; then
  echo "selftest: FAIL: /blobvirt/stay left behind" >&2; exit 1
fi
# shellcheck source=guest/lib.sh
. "$here/lib.sh"
e2fsck -fn "$(fs_spec "$img")" >/dev/null 2>&1 || { echo "selftest: FAIL: e2fsck found errors" >&2; exit 1; }
[ "$("$here/read-marker.sh" "$img" log | grep -c '^boot=')" = 5 ] || { echo "selftest: FAIL: log" >&2; exit 1; }
echo "selftest: OK ($("$here/read-marker.sh" "$img" marker))"
