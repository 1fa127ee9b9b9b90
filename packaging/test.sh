#!/usr/bin/env bash
# Tests blobvirt's Debian packages on this machine, as root: builds them
# (packaging/build.sh), runs lintian (any E: fails), installs them with
# their dependencies, checks files, user, group, directories, the libvirt
# hook (run by libvirtd when one runs) and the units (systemd-analyze
# verify), makes certificates with `blobvirt ca`, runs each unit's
# ExecStart= as the unit would (user, NOTIFY_SOCKET: READY=1), reinstalls
# over a changed config, removes, purges, and checks that only the data under
# /var/lib/blobvirt (and the blobvirt user and group) stays, as
# packaging/README.md says.
#
# It leaves the machine as it found it: /etc/blobvirt and the hook
# /etc/libvirt/hooks/qemu.d/50-blobvirt are saved and restored, and what
# the test made (user, group, directories, dependencies it had apt install)
# is undone, by an EXIT trap, also on failure. The last line is
# "N passed, M failed"; the exit status is non-zero when M > 0.
#
#   bash packaging/test.sh
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "$(id -u)" != 0 ]; then
  echo "error: packaging/test.sh installs packages: run it as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
pkgs=(blobvirt-opennebula blobvirt-poold blobvirt-chunkd blobvirt-mirrord blobvirt)
for p in "${pkgs[@]}"; do
  if dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -qv '^unknown\|not-installed'; then
    echo "error: $p is installed on this machine; this test would purge it (dpkg --purge ${pkgs[*]} first)" >&2
    exit 1
  fi
done

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
# check DESCRIPTION COMMAND...: one counted check; fails like COMMAND.
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; return 1; fi
}

hook=/etc/libvirt/hooks/qemu.d/50-blobvirt
save=$(mktemp -d /tmp/blobvirt-pkgtest.XXXXXX)
# The daemons' notify sockets: reachable by the blobvirt user ($save is not).
notify=$(mktemp -d /tmp/blobvirt-pkgtest-notify.XXXXXX) && chmod 0755 "$notify"

# --- what the machine looks like before -------------------------------------
had_etc=0; [ -d /etc/blobvirt ] && had_etc=1 && cp -a /etc/blobvirt "$save/etc-blobvirt"
had_hook=0; { [ -e "$hook" ] || [ -L "$hook" ]; } && had_hook=1 && cp -a "$hook" "$save/hook"
had_group=0; group_line=$(getent group blobvirt) && had_group=1
had_user=0; getent passwd blobvirt >/dev/null && had_user=1
had_run=0; [ -d /run/blobvirt ] && had_run=1
had_dirs=()
for d in /var/lib/blobvirt /var/lib/blobvirt/poold /var/lib/blobvirt/chunkd \
  /var/lib/blobvirt/cache /var/lib/blobvirt/pool /etc/libvirt /etc/libvirt/hooks \
  /etc/libvirt/hooks/qemu.d; do
  [ -d "$d" ] && had_dirs+=("$d")
done
had_dir() { local d; for d in "${had_dirs[@]}"; do [ "$d" = "$1" ] && return 0; done; return 1; }
# The paths our packages may touch, to compare after the purge. Only these
# trees: other tests may change the rest of /etc meanwhile.
snapshot() {
  find /etc/blobvirt /etc/libvirt/hooks /etc/systemd /usr/lib/systemd/system \
    /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked \
    /usr/share/doc /var/lib/blobvirt -xdev -path '*blobvirt*' 2>/dev/null | sort
  ls -1d /usr/bin/poold /usr/bin/chunkd /usr/bin/mirrord /usr/bin/blobvirt /usr/bin/blobvirt-hook 2>/dev/null
}
# With type, mode, owner and content: what the clean-up must restore.
state() {
  snapshot | while read -r f; do
    if [ -f "$f" ] && [ ! -L "$f" ]; then
      echo "$f $(stat -c '%F %a %U:%G' "$f") $(sha256sum < "$f" | cut -c1-16)"
    else
      echo "$f $(stat -c '%F %a %U:%G' "$f") $(readlink "$f")"
    fi
  done
  echo "group: $(getent group blobvirt)"
  echo "user: $(getent passwd blobvirt)"
}
snapshot > "$save/before"
state > "$save/state-before"
new_deps=()
marker=/var/lib/blobvirt/chunkd/blobvirt-pkgtest.data

# shellcheck source=../scripts/lib.sh
source scripts/lib.sh

# start_daemon NAME USER UMASK ARGS...: runs ARGS as the unit would (its
# User=, UMask=, a clean environment, the NOTIFY_SOCKET of Type=notify;
# setpriv execs, so the pid is the daemon's) and waits up to 60 s for
# READY=1; false when the daemon exits or stays silent.
start_daemon() {
  local name=$1 user=$2 umask=$3 dir="$notify/$1" listener daemon i
  shift 3
  mkdir -p "$dir" && chmod 0755 "$dir"
  python3 - "$dir/sock" > "$dir/got" 2>&1 <<'PY' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
s.settimeout(60)
try:
    while True:
        msg = s.recv(4096).decode(errors="replace")
        print(msg, flush=True)
        if "READY=1" in msg.split("\n"):
            sys.exit(0)
except socket.timeout:
    sys.exit(1)
PY
  listener=$!
  for i in $(seq 1 50); do [ -S "$dir/sock" ] && break; sleep 0.1; done
  ( umask "$umask"
    exec setpriv --reuid="$user" --regid="$user" --init-groups \
      env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin NOTIFY_SOCKET="$dir/sock" "$@" ) > "$save/$name.log" 2>&1 &
  daemon=$!
  daemon_pids+=("$daemon")
  eval "pid_$name=$daemon"
  for i in $(seq 1 600); do
    kill -0 "$listener" 2>/dev/null || { wait "$listener"; return; }
    kill -0 "$daemon" 2>/dev/null || { kill "$listener" 2>/dev/null; wait "$listener"; return 1; }
    sleep 0.1
  done
  kill "$listener" 2>/dev/null
  return 1
}
# stop_daemon PID: SIGTERM (what systemd sends), SIGKILL after 30 s.
stop_daemon() {
  local i
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null
  for i in $(seq 1 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null
  return 1
}
# The ExecStart= of an installed unit.
exec_start() { sed -n 's/^ExecStart=//p' "/usr/lib/systemd/system/$1.service"; }

daemon_pids=()
cleanup() {
  local p d
  # Daemons this test started (by their pid), then their mount.
  for p in "${daemon_pids[@]}"; do stop_daemon "$p"; done
  if mountpoint -q /var/lib/blobvirt/pool 2>/dev/null; then umount -l /var/lib/blobvirt/pool; fi
  for p in "${pkgs[@]}"; do
    if dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -qv 'not-installed'; then
      dpkg --purge "$p" >/dev/null 2>&1 || echo "warning: cannot purge $p" >&2
    fi
  done
  if [ "${#new_deps[@]}" -gt 0 ]; then
    apt-get -o DPkg::Lock::Timeout=120 purge -y -qq "${new_deps[@]}" >/dev/null 2>&1 ||
      echo "warning: cannot remove ${new_deps[*]}" >&2
  fi
  rm -f "$marker"
  command -v virsh >/dev/null && virsh -q -c qemu:///system destroy blobvirt-pkgtest >/dev/null 2>&1
  # Restore /etc/blobvirt and the hook as they were.
  if [ "$had_etc" = 1 ]; then
    rm -rf /etc/blobvirt && cp -a "$save/etc-blobvirt" /etc/blobvirt
  fi
  if [ "$had_hook" = 1 ]; then
    mkdir -p "${hook%/*}" && rm -f "$hook" && cp -a "$save/hook" "$hook"
  fi
  # The data the daemons wrote stays after purge, as it should: remove what
  # this test made (never across a file system: the mount is gone above).
  for d in /var/lib/blobvirt/poold /var/lib/blobvirt/chunkd /var/lib/blobvirt/cache \
    /var/lib/blobvirt/pool /var/lib/blobvirt; do
    if [ -d "$d" ] && ! had_dir "$d"; then rm -rf --one-file-system "$d"; fi
  done
  for d in /etc/libvirt/hooks/qemu.d /etc/libvirt/hooks /etc/libvirt; do
    if [ -d "$d" ] && ! had_dir "$d"; then rmdir "$d" 2>/dev/null; fi
  done
  if [ "$had_run" = 0 ]; then rm -rf /run/blobvirt; else rm -f /run/blobvirt/mirrord.sock; fi
  if [ "$had_user" = 0 ] && getent passwd blobvirt >/dev/null; then deluser --quiet --system blobvirt >/dev/null 2>&1; fi
  if [ "$had_group" = 0 ] && getent group blobvirt >/dev/null; then delgroup --quiet --system blobvirt >/dev/null 2>&1; fi
  # deluser also removes a user's empty group of the same name: put back
  # one that was there before (scripts/install-deps.sh makes it), same gid.
  if [ "$had_group" = 1 ] && ! getent group blobvirt >/dev/null; then
    IFS=: read -r _ _ gid members <<< "$group_line"
    groupadd --system --gid "$gid" blobvirt
    if [ -n "$members" ]; then gpasswd -M "$members" blobvirt >/dev/null; fi
  fi
  # The packages sent a running libvirtd SIGHUP when they added or removed
  # the hook: make it rescan, so it runs the restored hook again.
  if pid=$(daemon_pid libvirtd); then kill -HUP "$pid" 2>/dev/null; fi
}
finish() {
  cleanup
  state > "$save/state-after"
  if cmp -s "$save/state-before" "$save/state-after"; then
    ok "clean-up: /etc/blobvirt, the hook, the data directories, user and group are as before"
  else
    bad "clean-up: the machine differs from before the test:"
    diff "$save/state-before" "$save/state-after" | sed 's/^/     /'
  fi
  rm -rf "$save" "$notify"
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}
trap 'rc=$?; finish || [ "$rc" != 0 ] || rc=1; exit "$rc"' EXIT
trap 'bad "interrupted"; exit 130' INT TERM

# --- tools: lintian, systemd-analyze (the systemd package; it does not need
# systemd to run), python3 (TOML check) ----------------------------------------
tools=()
command -v lintian >/dev/null || tools+=(lintian)
command -v systemd-analyze >/dev/null || tools+=(systemd)
command -v python3 >/dev/null || tools+=(python3)
if [ "${#tools[@]}" -gt 0 ]; then
  echo "installing: ${tools[*]}"
  apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${tools[@]}" >/dev/null 2>&1 ||
    { apt-get -o DPkg::Lock::Timeout=120 update -qq &&
      apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${tools[@]}" >/dev/null; } ||
    { echo "error: cannot install ${tools[*]}" >&2; exit 1; }
fi

# --- build ------------------------------------------------------------------
t0=$(date +%s)
if ! bash packaging/build.sh > "$save/build.log" 2>&1; then
  tail -30 "$save/build.log"
  bad "packaging/build.sh builds the packages"
  exit 1
fi
ok "packaging/build.sh builds the packages ($(( $(date +%s) - t0 )) s)"
debs=()
for p in blobvirt blobvirt-poold blobvirt-chunkd blobvirt-mirrord blobvirt-opennebula; do
  f=$(ls -1 target/debian/"${p}"_*.deb 2>/dev/null | head -1)
  check "target/debian has ${p}_*.deb" test -n "$f" || exit 1
  debs+=("$repo/$f")
done

# --- control fields -----------------------------------------------------------
field() { dpkg-deb -f "$1" "$2"; }
version=$(field "${debs[0]}" Version)
check "blobvirt depends on libvirt0 and adduser" \
  bash -c '[[ "$1" == *libvirt0* && "$1" == *adduser* ]]' _ "$(field "${debs[0]}" Depends)"
check "blobvirt-mirrord depends on fuse3" \
  bash -c '[[ "$1" == *fuse3* ]]' _ "$(field "${debs[3]}" Depends)"
for i in 1 2 3 4; do
  check "$(field "${debs[$i]}" Package) depends on blobvirt (= $version)" \
    bash -c '[[ "$1" == *"blobvirt (= $2)"* ]]' _ "$(field "${debs[$i]}" Depends)" "$version"
done
check "/etc/blobvirt/blobvirt.toml is a conffile of blobvirt" \
  bash -c 'dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles | grep -qx /etc/blobvirt/blobvirt.toml' _ "${debs[0]}"
check "packaging/blobvirt.toml is valid TOML with the five sections" python3 -c '
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
assert set(c) == {"cluster", "tls", "poold", "chunkd", "mirrord"}, set(c)' packaging/blobvirt.toml

# --- lintian ------------------------------------------------------------------
for f in "${debs[@]}"; do
  lintian --tag-display-limit 0 "$f" > "$save/lintian" 2>/dev/null
  grep '^[WE]: ' "$save/lintian" | sed 's/^/     /'
  check "lintian: no E: in ${f##*/}" bash -c '! grep -q "^E: " "$1"' _ "$save/lintian"
done

# --- install ------------------------------------------------------------------
# apt installs the Depends from the archive; note the ones it adds so the
# clean-up removes them again.
sim=$(apt-get -s install "${debs[@]}" 2>/dev/null | sed -n 's/^Inst \([^ ]*\) .*/\1/p')
for p in $sim; do
  case " ${pkgs[*]} " in *" $p "*) ;; *) new_deps+=("$p") ;; esac
done
if ! apt-get -o DPkg::Lock::Timeout=120 install -y -qq "${debs[@]}" > "$save/apt.log" 2>&1; then
  apt-get -o DPkg::Lock::Timeout=120 update -qq >/dev/null 2>&1
  sim=$(apt-get -s install "${debs[@]}" 2>/dev/null | sed -n 's/^Inst \([^ ]*\) .*/\1/p')
  new_deps=()
  for p in $sim; do
    case " ${pkgs[*]} " in *" $p "*) ;; *) new_deps+=("$p") ;; esac
  done
  apt-get -o DPkg::Lock::Timeout=120 install -y -qq "${debs[@]}" > "$save/apt.log" 2>&1
fi
for p in "${pkgs[@]}"; do
  check "$p is installed" bash -c '[ "$(dpkg-query -W -f "\${Status}" "$1")" = "install ok installed" ]' _ "$p"
done
[ "$failed" = 0 ] || { tail -20 "$save/apt.log"; exit 1; }
[ "${#new_deps[@]}" -gt 0 ] && echo "     (apt added: ${new_deps[*]})"

# stat -c '%U:%G %a' of $1 is $2.
owned() { [ "$(stat -c '%U:%G %a' "$1" 2>/dev/null)" = "$2" ]; }
# Their shared libraries resolve (the hook is run below).
for b in poold chunkd mirrord blobvirt; do
  check "/usr/bin/$b runs (--help)" bash -c '"$1" --help >/dev/null 2>&1 </dev/null' _ "/usr/bin/$b"
done
for u in blobvirt-poold blobvirt-chunkd blobvirt-mirrord; do
  check "unit /usr/lib/systemd/system/$u.service is installed" test -f "/usr/lib/systemd/system/$u.service"
  check "systemd-analyze verify $u.service" \
    bash -c 'out=$(systemd-analyze verify "$1" 2>&1); [ -z "$out" ] || { echo "$out"; false; }' _ "/usr/lib/systemd/system/$u.service"
  check "$u.service is not enabled on installation" \
    bash -c '! ls /etc/systemd/system/*.wants/"$1" >/dev/null 2>&1' _ "$u.service"
done
check "/etc/blobvirt/blobvirt.toml is the example" cmp -s /etc/blobvirt/blobvirt.toml packaging/blobvirt.toml
check "the etcd member template ships as /usr/share/doc/blobvirt/etcd.env" \
  cmp -s /usr/share/doc/blobvirt/etcd.env packaging/etcd/etcd.env
# The OpenNebula drivers: every action, the configuration, the sudoers rule.
one=/var/lib/one/remotes
for a in cp mkfs stat clone rm monitor snap_delete snap_revert snap_flatten; do
  check "DS action $one/datastore/blobvirt/$a is installed, executable" test -x "$one/datastore/blobvirt/$a"
done
for a in clone ln mv mvds cpds delete resize snap_create snap_create_live snap_revert \
  snap_delete premigrate postmigrate failmigrate monitor; do
  check "TM action $one/tm/blobvirt/$a is installed, executable" test -x "$one/tm/blobvirt/$a"
done
check "the drivers' /etc/blobvirt/opennebula.conf is a conffile of blobvirt-opennebula" \
  bash -c 'dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles | grep -qx /etc/blobvirt/opennebula.conf' _ "${debs[4]}"
export -f owned
check "/etc/sudoers.d/blobvirt-opennebula is root:root 440 and valid" \
  bash -c 'owned "$1" "root:root 440" && visudo -c -q -f "$1"' _ /etc/sudoers.d/blobvirt-opennebula
# (Before `blobvirt ca`, the packaged configuration names certificates
# that do not exist yet: that is the one line then.)
check "an installed DS action runs /usr/bin/blobvirt and fails in one line on empty stdin" \
  bash -c 'err=$("$1" 7 </dev/null 2>&1 >/dev/null); rc=$?
    [ "$rc" != 0 ] && [ "$(printf "%s\n" "$err" | wc -l)" = 1 ] &&
    [[ "$err" == "no DS_DRIVER_ACTION_DATA on stdin"* || "$err" == "configuration file /etc/blobvirt/blobvirt.toml:"* ]] ||
    { echo "rc=$rc: $err"; false; }' _ "$one/datastore/blobvirt/cp"
check "group blobvirt is a system group" \
  bash -c 'gid=$(getent group blobvirt | cut -d: -f3) && [ "$gid" -lt 1000 ]'
check "user blobvirt is a system user in group blobvirt without a shell" \
  bash -c 'IFS=: read -r _ _ uid gid _ home shell < <(getent passwd blobvirt) &&
    [ "$uid" -lt 1000 ] && [ "$gid" = "$(getent group blobvirt | cut -d: -f3)" ] &&
    [ "$home" = /var/lib/blobvirt ] && [ "$shell" = /usr/sbin/nologin ]'
check "/etc/blobvirt/tls is root:blobvirt 0750" owned /etc/blobvirt/tls "root:blobvirt 750"
had_dir /var/lib/blobvirt ||
  check "/var/lib/blobvirt is root:root 0755" owned /var/lib/blobvirt "root:root 755"
had_dir /var/lib/blobvirt/poold ||
  check "/var/lib/blobvirt/poold is blobvirt:blobvirt 0750" owned /var/lib/blobvirt/poold "blobvirt:blobvirt 750"
had_dir /var/lib/blobvirt/chunkd ||
  check "/var/lib/blobvirt/chunkd is blobvirt:blobvirt 0750" owned /var/lib/blobvirt/chunkd "blobvirt:blobvirt 750"
had_dir /var/lib/blobvirt/cache ||
  check "/var/lib/blobvirt/cache is root:root 0700" owned /var/lib/blobvirt/cache "root:root 700"
had_dir /var/lib/blobvirt/pool ||
  check "/var/lib/blobvirt/pool is root:root 0755" owned /var/lib/blobvirt/pool "root:root 755"
check "the hook $hook links to /usr/bin/blobvirt-hook" \
  bash -c '[ "$(readlink "$1")" = /usr/bin/blobvirt-hook ] && [ -x "$1" ]' _ "$hook"
# libvirt runs it as `50-blobvirt DOMAIN OPERATION SUBOP EXTRA`, XML on stdin.
check "the hook passes a domain without blobvirt disks" bash -c \
  'echo "<domain type=\"qemu\"><name>t</name><devices/></domain>" |
   BLOBVIRT_HOOK_CONFIG=/nonexistent/hook.json "$1" t prepare begin - >/dev/null' _ "$hook"

# With a running libvirtd (scripts/test.sh starts one): libvirtd itself runs
# the hook through the symlink. A pool whose mirrord is not there makes the
# hook refuse a domain on the mount, so the start fails with its message.
if daemon_pid libvirtd >/dev/null && command -v virsh >/dev/null; then
  cat > /etc/blobvirt/hook.json <<'JSON'
{"pools": [{"name": "blobvirt-pkgtest", "mount": "/var/lib/blobvirt/pool",
  "control": "/nonexistent/blobvirt-pkgtest.sock", "pool_url": "", "connect": "qemu:///system"}]}
JSON
  cat > "$save/domain.xml" <<'XML'
<domain type='qemu'>
  <name>blobvirt-pkgtest</name>
  <memory unit='MiB'>32</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/blobvirt/pool/blobvirt-pkgtest'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
XML
  # libvirtd rescans its hooks asynchronously after the postinst's SIGHUP.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    timeout 60 virsh -q -c qemu:///system create "$save/domain.xml" > "$save/virsh.log" 2>&1
    grep -q "50-blobvirt" "$save/virsh.log" && break
    virsh -q -c qemu:///system destroy blobvirt-pkgtest >/dev/null 2>&1
    sleep 1
  done
  what="libvirtd runs the hook through the symlink (the start is refused by it)"
  if grep -q "blobvirt: domain blobvirt-pkgtest cannot start: cannot reach mirrord" "$save/virsh.log"; then
    ok "$what"
  else
    bad "$what"
    sed 's/^/     /' "$save/virsh.log"
  fi
  rm -f /etc/blobvirt/hook.json
else
  echo "skip libvirtd runs the hook (no libvirtd running)"
fi

# --- the shipped configuration, certificates, and the daemons as their units run them
# The real parser reads the whole example (unknown keys are errors) before
# it looks for the certificates, which do not exist yet.
env -u BLOBVIRT_CONFIG -u BLOBVIRT_CLUSTER_DIR -u BLOBVIRT_POOL \
  blobvirt --config /etc/blobvirt/blobvirt.toml vol-list > "$save/cli.log" 2>&1
check "the CLI reads the shipped config and asks for the missing certificates" \
  grep -q "\[tls\] ca names /etc/blobvirt/tls/ca.pem, which does not exist" "$save/cli.log" ||
  sed 's/^/     /' "$save/cli.log"
# The certificates as packaging/README.md says to make them, for node "node"
# (the example's [tls] names node.pem and node.key).
check "blobvirt ca init --dir /etc/blobvirt/tls" \
  bash -c 'blobvirt ca init --dir /etc/blobvirt/tls >/dev/null'
check "blobvirt ca issue node --ip 127.0.0.1 --dir /etc/blobvirt/tls" \
  bash -c 'blobvirt ca issue node --ip 127.0.0.1 --dns localhost --dir /etc/blobvirt/tls >/dev/null'
check "/etc/blobvirt/tls/node.key is 0600 and the directory still root:blobvirt 0750" \
  bash -c '[ "$(stat -c %a /etc/blobvirt/tls/node.key)" = 600 ] && [ "$(stat -c "%U:%G %a" /etc/blobvirt/tls)" = "root:blobvirt 750" ]'
chown blobvirt:blobvirt /etc/blobvirt/tls/node.key

# No systemd here: run each unit's ExecStart= as the unit would, with
# overrides only for what the example leaves to the site (poold's address;
# free ports instead of the example's fixed ones).
run_daemons=1
if mountpoint -q /var/lib/blobvirt/pool || [ -e /run/blobvirt/mirrord.sock ]; then
  run_daemons=0
  echo "skip the daemons: something already serves /var/lib/blobvirt/pool or /run/blobvirt/mirrord.sock"
fi
if [ "$run_daemons" = 1 ]; then
  # shellcheck disable=SC2046
  if start_daemon poold blobvirt 0027 $(exec_start blobvirt-poold) --listen 127.0.0.1:0 --metrics 127.0.0.1:0; then
    ok "poold (user blobvirt, the packaged config and key) sends READY=1"
  else
    bad "poold (user blobvirt, the packaged config and key) sends READY=1"
    tail -5 "$save/poold.log" | sed 's/^/     /'
  fi
  check "poold wrote its address file as blobvirt" \
    bash -c '[ "$(stat -c %U /var/lib/blobvirt/poold/poold.addr 2>/dev/null)" = blobvirt ]'
  pool="https://$(cat /var/lib/blobvirt/poold/poold.addr 2>/dev/null)"
  # shellcheck disable=SC2046
  if start_daemon chunkd blobvirt 0027 $(exec_start blobvirt-chunkd) --pool "$pool" --listen 127.0.0.1:0 --metrics 127.0.0.1:0; then
    ok "chunkd (user blobvirt, the packaged config and key) sends READY=1"
  else
    bad "chunkd (user blobvirt, the packaged config and key) sends READY=1"
    tail -5 "$save/chunkd.log" | sed 's/^/     /'
  fi
  for _ in $(seq 1 100); do grep -q "registered with poold" "$save/chunkd.log" && break; sleep 0.1; done
  check "chunkd registers with poold over mutual TLS" grep -q "registered with poold" "$save/chunkd.log"
  # RuntimeDirectory=blobvirt, RuntimeDirectoryMode=0755.
  mkdir -p -m 0755 /run/blobvirt
  # shellcheck disable=SC2046
  if start_daemon mirrord root 0022 $(exec_start blobvirt-mirrord) --pool "$pool" --metrics 127.0.0.1:0; then
    ok "mirrord (root) mounts /var/lib/blobvirt/pool and sends READY=1"
  else
    bad "mirrord (root) mounts /var/lib/blobvirt/pool and sends READY=1"
    tail -5 "$save/mirrord.log" | sed 's/^/     /'
  fi
  check "/var/lib/blobvirt/pool is mounted" mountpoint -q /var/lib/blobvirt/pool
  check "the control socket /run/blobvirt/mirrord.sock is root:blobvirt 0660" \
    bash -c '[ -S /run/blobvirt/mirrord.sock ] && [ "$(stat -c "%U:%G %a" /run/blobvirt/mirrord.sock)" = "root:blobvirt 660" ]'
  # SIGTERM, as systemctl stop sends: mirrord commits and unmounts first.
  # shellcheck disable=SC2154
  for p in "$pid_mirrord" "$pid_chunkd" "$pid_poold"; do stop_daemon "$p"; done
  check "the daemons exit on SIGTERM and mirrord unmounts" \
    bash -c '! kill -0 "$1" "$2" "$3" 2>/dev/null && ! mountpoint -q /var/lib/blobvirt/pool' _ \
    "$pid_mirrord" "$pid_chunkd" "$pid_poold"
fi

# --- upgrade (reinstall): configuration and data stay ---------------------------
echo "# changed by packaging/test.sh" >> /etc/blobvirt/blobvirt.toml
echo data > "$marker"
check "reinstalling over a changed config succeeds" \
  bash -c 'dpkg --force-confold -i "$@" >/dev/null 2>&1' _ "${debs[@]}"
check "the changed config is kept on upgrade" grep -q '^# changed by packaging/test.sh' /etc/blobvirt/blobvirt.toml
check "the data is kept on upgrade" test -f "$marker"
check "the hook is still there after the upgrade" test -L "$hook"

# --- remove: configuration and data stay ------------------------------------------
dpkg_files=$(dpkg-query -L "${pkgs[@]}" 2>/dev/null | sort -u)
check "dpkg --remove succeeds" bash -c 'dpkg --remove "$@" >/dev/null 2>&1' _ "${pkgs[@]}"
check "the binaries are gone after remove" \
  bash -c '! ls /usr/bin/poold /usr/bin/chunkd /usr/bin/mirrord /usr/bin/blobvirt /usr/bin/blobvirt-hook 2>/dev/null'
check "the hook is gone after remove" bash -c '! [ -e "$1" ] && ! [ -L "$1" ]' _ "$hook"
check "the config is kept on remove" test -f /etc/blobvirt/blobvirt.toml
check "the certificates are kept on remove" test -f /etc/blobvirt/tls/node.key -a -f /etc/blobvirt/tls/ca.key
check "the data is kept on remove" test -f "$marker"

# --- purge: configuration goes, data stays ------------------------------------------
# A stale hook.json like the one `blobvirt pool-define` writes.
echo '{"pools": []}' > /etc/blobvirt/hook.json
check "dpkg --purge succeeds" bash -c 'dpkg --purge "$@" >/dev/null 2>&1' _ "${pkgs[@]}"
for p in "${pkgs[@]}"; do
  check "$p is not known to dpkg after purge" \
    bash -c '! dpkg-query -W -f "\${Status}" "$1" 2>/dev/null | grep -qv not-installed' _ "$p"
done
check "the config, hook.json and tls are gone after purge" \
  bash -c '! ls -d /etc/blobvirt/blobvirt.toml /etc/blobvirt/hook.json /etc/blobvirt/tls 2>/dev/null'
[ "$had_etc" = 1 ] || check "/etc/blobvirt is gone after purge" test ! -e /etc/blobvirt
check "no packaged file is left after purge" bash -c '
  left=0
  while read -r f; do
    [ -n "$f" ] && [ ! -d "$f" ] && { [ -e "$f" ] || [ -L "$f" ]; } && { echo "left: $f"; left=1; }
  done <<< "$1"
  [ "$left" = 0 ]' _ "$dpkg_files"
check "the data under /var/lib/blobvirt stays after purge" test -f "$marker"
if [ "$run_daemons" = 1 ]; then
  check "poold's metadata store stays after purge" test -s /var/lib/blobvirt/poold/poold.addr
fi
had_dir /var/lib/blobvirt/pool ||
  check "the empty mount point /var/lib/blobvirt/pool is gone after purge" test ! -e /var/lib/blobvirt/pool
check "the user and group blobvirt stay after purge (they may own the data)" \
  bash -c 'getent passwd blobvirt >/dev/null && getent group blobvirt >/dev/null'
# Everything else as before: only data under /var/lib/blobvirt (not the
# mount point) may be new.
snapshot > "$save/after"
check "nothing else is left after purge" bash -c '
  extra=$(comm -13 "$1" "$2" | grep -v -e "^/var/lib/blobvirt$" -e "^/var/lib/blobvirt/poold" \
    -e "^/var/lib/blobvirt/chunkd" -e "^/var/lib/blobvirt/cache")
  [ -z "$extra" ] || { echo "$extra"; false; }' _ "$save/before" "$save/after"
