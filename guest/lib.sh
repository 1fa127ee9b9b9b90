# shellcheck shell=bash
# Helpers shared by read-marker.sh, set-stay.sh and boot-test.sh: locate the
# guest's ext4 partition inside a raw image and address it with e2fsprogs'
# "FILE?offset=BYTES" syntax, so no loop device or mount is needed.

# part_offset IMAGE -> byte offset of the image's first partition
part_offset() {
  local start
  start=$(sfdisk --dump "$1" 2>/dev/null | sed -n 's/.*start= *\([0-9][0-9]*\).*/\1/p' | head -n 1)
  [ -n "$start" ] || { echo "error: $1 has no partition table; build it with guest/build-guest.sh" >&2; return 1; }
  echo $((start * 512))
}

# fs_spec IMAGE -> argument for debugfs/e2fsprogs naming the partition
fs_spec() {
  local off
  case "$1" in *'?'*) echo "error: image path $1 must not contain '?'" >&2; return 1 ;; esac
  off=$(part_offset "$1") || return 1
  echo "$1?offset=$off"
}

# guest_path PATH -> absolute path in the guest fs; relative = under /blobvirt
guest_path() {
  case "$1" in /*) echo "$1" ;; *) echo "/blobvirt/$1" ;; esac
}

# needs_recovery SPEC: true if the ext4 journal holds changes not yet written
# to their home locations (the guest is running, or was killed / destroyed).
# debugfs ignores the journal, so such a file system must be replayed first.
needs_recovery() {
  dumpe2fs -h "$1" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery'
}

# replay_journal FILE [OFFSET]: apply the journal in place (e2fsck -E
# journal_only). e2fsck loses an "?offset=" after replaying, so a partition
# inside an image is replayed through a loop device (needs root).
replay_journal() {
  local rc=0 dev=$1 loop=
  if [ "${2:-0}" != 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "error: replaying the journal of $1 needs root (loop device)" >&2; return 1; }
    loop=$(losetup --find --show --offset "$2" "$1") || return 1
    dev=$loop
  fi
  e2fsck -y -E journal_only "$dev" >/dev/null 2>&1 || rc=$?
  [ -z "$loop" ] || losetup -d "$loop" || true
  [ "$rc" -le 1 ] || { echo "error: e2fsck could not replay the journal of $1 (exit $rc)" >&2; return 1; }
}
