#!/usr/bin/env bash
# Shared by the blobvirt DS actions: reads the driver configuration and
# runs `blobvirt one ds ACTION ID` on the front-end with
# DS_DRIVER_ACTION_DATA on stdin. Sourced, not run.
conf=${BLOBVIRT_DRIVER_CONF:-/etc/blobvirt/opennebula.conf}
# shellcheck source=packaging/opennebula/opennebula.conf
[ -r "$conf" ] && . "$conf"
: "${BLOBVIRT:=blobvirt}"

# ds_action ACTION ID: the action; its stdout is what oned parses, its
# stderr one sentence on failure.
ds_action() {
  exec "$BLOBVIRT" one ds "$1" "$2"
}
