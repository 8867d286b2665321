# Shell functions shared by the e2e and bench scripts. Source it after defining say().
# shellcheck shell=bash

# Fails with where to get Go when it is missing.
need_go() {
  command -v go >/dev/null || { say "Go is required (https://go.dev/doc/install)"; exit 1; }
}

# Runs a long build while printing a line every 30 s, so a slow first run is visibly alive.
with_progress() {
  local what=$1; shift
  local start=$SECONDS
  "$@" &
  local pid=$! next=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if ((SECONDS >= next)) && kill -0 "$pid" 2>/dev/null; then
      say "$what: still building ($((SECONDS - start)) s)"
      next=$((SECONDS + 30))
    fi
  done
  wait "$pid"
  say "$what: built in $((SECONDS - start)) s"
}

# Installs the Debian packages among its arguments that are not installed yet. A
# service Debian may start for one of them (knot, unbound, named on port 53) is never
# used: every test starts its own instance with its own configuration.
ensure_debian_packages() {
  local missing=() p sudo=
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  say "installing Debian packages: ${missing[*]}"
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || { say "need root or sudo to install: ${missing[*]}"; exit 1; }
    sudo=sudo
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
