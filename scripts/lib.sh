# Shell helpers shared by scripts/ and packaging/ (sourced, not run).

# daemon_pid NAME: the pid in /run/NAME.pid when that process runs NAME's
# binary (a stale pid file, or a pid reused by another program, is not it).
daemon_pid() {
  local f="/run/$1.pid" pid exe
  [ -r "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f")
  [ -n "$pid" ] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "$(basename "${exe% (deleted)}")" = "$1" ] || return 1
  echo "$pid"
}

# prepare_libvirt_host: what the demo and the libvirt benches need first
# (run from the repository root): the project's, the guest's and libvirt's
# packages, running libvirtd/virtlogd, and /dev/kvm in Debian's udev mode.
# libvirt trusts its cached QEMU capabilities only while QEMU's user can
# open /dev/kvm as when it probed; without udev /dev/kvm is root-only and
# every define re-probes QEMU (~45 s). The domains stay type='qemu' (TCG).
prepare_libvirt_host() {
  bash scripts/install-deps.sh >/dev/null
  bash guest/install-deps.sh >/dev/null
  bash scripts/libvirt-setup.sh >/dev/null
  if [ -e /dev/kvm ]; then chown root:kvm /dev/kvm && chmod 0660 /dev/kvm; fi
}

# wait_ticks MOUNT PREFIX N MIN TRIES: waits (TRIES x 0.5 s per domain) until
# the test guests PREFIX-1..N have written MIN ticks to their clones on
# MOUNT; returns 1 naming the first that did not.
wait_ticks() {
  local mnt=$1 prefix=$2 n=$3 min=$4 tries=$5 i t
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 "$tries"); do
      t=$(guest/read-marker.sh "$mnt/$prefix-$i" ticks 2>/dev/null || echo 0)
      [ "${t:-0}" -ge "$min" ] && break
      sleep 0.5
    done
    [ "${t:-0}" -ge "$min" ] || { echo "$prefix-$i wrote ${t:-0} ticks, not $min" >&2; return 1; }
  done
}
