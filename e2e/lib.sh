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

# Where built tools are cached, so a second run, or a fresh clone on this machine, reuses them.
KAD_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/kube-acme-dns
# shellcheck disable=SC2034 # used by the scripts that source this file
KAD_CACHE_BIN=$KAD_CACHE/bin

# Prints a port on 127.0.0.1 that is free for both UDP and TCP right now.
free_port() {
  python3 - <<'PY'
import socket
for _ in range(100):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close()
        continue
    u.close()
    t.close()
    print(port)
    break
else:
    raise SystemExit("no free port")
PY
}

# stop_pid PID: TERM, then KILL if it is still running 5 s later.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$pid did not stop on TERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# wait_soa NAME PID PORT ZONE LOG: waits (60 s at most) until 127.0.0.1:PORT answers ZONE's
# SOA with NOERROR and the AA flag. Fails with the tail of LOG if PID exits or time runs out.
wait_soa() {
  local name=$1 pid=$2 port=$3 zone=$4 log=$5 i
  for ((i = 0; i < 600; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "$name exited during start-up; last lines of $log:"
      tail -n 20 "$log" >&2 || true
      return 1
    fi
    # Query once the UDP port is bound: kdig's shortest timeout is a whole second.
    if grep -q ":$(printf '%04X' "$port") " /proc/net/udp &&
      kdig @127.0.0.1 -p "$port" +time=1 +retry=0 +norec "$zone" SOA 2>/dev/null | awk '
        /status: NOERROR/ { ok = 1 }
        # ";; Flags: qr aa; QUERY: 1; ...": the flags are the words before the first ";".
        /^;; Flags:/ { f = $0; sub(/^;; Flags: */, "", f); sub(/;.*/, "", f); n = split(f, w, " ")
                       for (i = 1; i <= n; i++) if (w[i] == "aa") aa = 1 }
        END { exit !(ok && aa) }'; then
      return 0
    fi
    sleep 0.1
  done
  say "$name did not answer SOA $zone on 127.0.0.1:$port within 60 s; last lines of $log:"
  tail -n 20 "$log" >&2 || true
  return 1
}
