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
