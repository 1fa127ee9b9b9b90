#!/usr/bin/env bash
# Shared by the blobvirt TM actions: the driver configuration, OpenNebula's
# host:path arguments, and running a command on a host through $SSH.
# Sourced, not run.
conf=${BLOBVIRT_DRIVER_CONF:-/etc/blobvirt/opennebula.conf}
# shellcheck source=packaging/opennebula/opennebula.conf
[ -r "$conf" ] && . "$conf"
: "${BLOBVIRT:=blobvirt}"
: "${SSH:=ssh}"
: "${BLOBVIRT_SUDO=sudo -n}"
: "${BLOBVIRT_DISK_OWNER=}"

# HOST of HOST:PATH, and PATH (split at the first colon, as oned does).
arg_host() { printf '%s' "${1%%:*}"; }
arg_path() { printf '%s' "${1#*:}"; }

# run_on HOST CMD ARGS...: CMD on HOST, every argument quoted for its shell.
run_on() {
  local host=$1
  shift
  local cmd
  cmd=$(printf '%q ' "$@")
  # $SSH may carry options; split it.
  # shellcheck disable=SC2086
  $SSH "$host" "$cmd"
}

# on_host HOST ACTION ARGS...: `blobvirt one tm ACTION ARGS...` on HOST as
# root (sudo); its stderr is the one sentence OpenNebula shows.
on_host() {
  local host=$1
  shift
  local sudo=()
  # BLOBVIRT_SUDO is a command with options ("sudo -n"), or empty.
  # shellcheck disable=SC2206
  [ -n "$BLOBVIRT_SUDO" ] && sudo=($BLOBVIRT_SUDO)
  run_on "$host" "${sudo[@]}" "$BLOBVIRT" one tm "$@"
}

# owner_args: --owner USER[:GROUP] when BLOBVIRT_DISK_OWNER is set.
owner_args() {
  [ -n "$BLOBVIRT_DISK_OWNER" ] && printf '%s\n' --owner "$BLOBVIRT_DISK_OWNER"
  return 0
}
