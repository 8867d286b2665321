# Shell functions shared by the e2e and bench scripts. Source it after defining say().
# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables here are used by the scripts that source this file

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

# ---------------------------------------------------------------------------------------
# Processes of the local cluster (e2e/cluster.sh, e2e/node.sh). Each started process is
# recorded in $STATE/NAME.pid as "pid starttime exe", so that stopping it (and the
# liveness check) only ever touch that very process, never a reused pid. The caller sets
# STATE and defines die().

proc_starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# Prints the pid recorded for NAME if that process is still the one we started.
live_pid() {
  local file=$STATE/$1.pid pid start exe
  [[ -f $file ]] || return 1
  read -r pid start exe <"$file" || return 1
  [[ -n ${pid:-} && -d /proc/$pid ]] || return 1
  [[ $(proc_starttime "$pid") == "$start" ]] || return 1
  [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$exe" ]] || return 1
  echo "$pid"
}

# start_proc NAME [nsenter --net=PATH --] BINARY ARGS...
# Starts BINARY detached (own session, so Ctrl-C or the caller's exit leave it alone)
# with its output in STATE/NAME.log, and records it. With the nsenter prefix it runs in
# that network namespace only (nsenter, unlike `ip netns exec`, keeps the mount namespace:
# kubelet's volume mounts must be visible to containerd and to `down`).
start_proc() {
  local name=$1; shift
  local bin=$1 args=("$@") i
  if [[ $1 == nsenter ]]; then
    for ((i = 1; i < ${#args[@]}; i++)); do
      [[ ${args[i]} == -- ]] && { bin=${args[i + 1]}; break; }
    done
  fi
  setsid "$@" </dev/null >"$STATE/$name.log" 2>&1 &
  local pid=$!
  local exe want
  want=$(readlink -f "$bin")
  # setsid (and nsenter) exec in place (the background child is not a group leader), so
  # $! becomes the binary.
  for _ in $(seq 1 50); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    [[ $exe == "$want" ]] && break
    sleep 0.1
  done
  [[ $exe == "$want" ]] || { tail -n 30 "$STATE/$name.log" >&2 || true; die "$name did not start"; }
  echo "$pid $(proc_starttime "$pid") $exe" >"$STATE/$name.pid"
}

stop_proc() {
  local name=$1 pid
  if pid=$(live_pid "$name"); then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      live_pid "$name" >/dev/null || break
      sleep 0.2
    done
    if live_pid "$name" >/dev/null; then
      say "$name did not exit after 20 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  rm -f "$STATE/$name.pid"
}

# The node's fixed addresses. They exist only inside the network namespace e2e/node.sh
# creates (no route out), so they cannot collide with anything outside it.
KAD_NODE_NAME=kad-node
KAD_NODE_IP=10.200.0.1       # on the bridge node0: kubelet's InternalIP
KAD_NODE_CIDR=10.200.0.0/24  # LoadBalancer addresses come from here too
KAD_POD_CIDR=10.244.0.0/24   # the CNI bridge cni0, gateway 10.244.0.1
KAD_SERVICE_CIDR=10.0.0.0/24 # the kubernetes Service is 10.0.0.1
KAD_NODE_API_PORT=6443       # the API server as pods and the node see it, on KAD_NODE_IP

# build_oci_archive REF ARCHIVE ROOTDIR [buildah config options...]
# An image FROM scratch holding ROOTDIR as its root filesystem, written as an OCI archive
# (for `ctr images import`). buildah keeps its storage in the cache, apart from any
# other use of buildah on the machine; the image is removed from it once exported.
build_oci_archive() {
  local ref=$1 archive=$2 root=$3; shift 3
  local storage=$KAD_CACHE/containers/storage run=$KAD_CACHE/containers/run
  local b=(buildah --root "$storage" --runroot "$run" --storage-driver vfs)
  local ctr
  ctr=$("${b[@]}" from --quiet scratch)
  "${b[@]}" copy --quiet "$ctr" "$root" / >/dev/null
  "${b[@]}" config "$@" "$ctr"
  "${b[@]}" commit --quiet --rm "$ctr" "$ref" >/dev/null
  rm -f "$archive.tmp"
  skopeo copy --quiet "containers-storage:[vfs@$storage+$run]$ref" "oci-archive:$archive.tmp:$ref"
  "${b[@]}" rmi "$ref" >/dev/null
  mv "$archive.tmp" "$archive"
}

# Points what follows at the local control plane (exports its KUBECONFIG and PATH): the
# one already up, or one started now and stopped when the calling script exits. $1 names
# the caller in messages. It sets the EXIT trap, so the caller must not set its own.
use_local_cluster() {
  local who=$1 repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if ! "$repo/e2e/cluster.sh" status >/dev/null 2>&1; then
    printf '[%s] starting the local control plane\n' "$who" >&2
    # shellcheck disable=SC2064 # the paths are expanded now, on purpose
    trap "'$repo/e2e/cluster.sh' down >/dev/null 2>&1 || printf '[%s] could not stop the local control plane: run e2e/cluster.sh down\n' '$who' >&2" EXIT
    "$repo/e2e/cluster.sh" up
  fi
  eval "$("$repo/e2e/cluster.sh" env)"
}
