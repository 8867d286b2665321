#!/usr/bin/env bash
# Pebble, Let's Encrypt's small ACME test server, on loopback for the integration tests. It
# validates DNS-01 challenges by asking the resolver given at start (e2e/unbound.sh), so a
# CNAME from _acme-challenge.<domain> into our zone is followed as Let's Encrypt follows it.
#
#   e2e/pebble.sh start DIR DNS_SERVER_ADDR
#       Start Pebble with its HTTPS (ACME and management) on free 127.0.0.1 ports, asking
#       DNS_SERVER_ADDR (127.0.0.1:PORT) for every DNS lookup. Once its directory answers, print
#       one line on stdout:  DIRECTORY_URL CA_BUNDLE_PATH
#       CA_BUNDLE_PATH is a PEM that verifies Pebble's HTTPS (for a ClusterIssuer's caBundle,
#       base64-encoded). Pebble's issuing root is written to DIR/pebble-root.pem as well.
#   e2e/pebble.sh root DIR
#       Fetch Pebble's issuing root again (it is new each time Pebble starts) into
#       DIR/pebble-root.pem, and print that path: what issued certificates chain up to.
#   e2e/pebble.sh stop DIR
#       Stop it (nothing to do if it is not running).
#   e2e/pebble.sh build | path
#       Build Pebble if needed (progress only) | print the binary's path.
#
# Pebble is built from its Go module (github.com/letsencrypt/pebble/v2, $PEBBLE_VERSION,
# default v2.10.3: CAA checks, ARI and profiles, as Let's Encrypt runs today) and cached in
# ${XDG_CACHE_HOME:-~/.cache}/kube-acme-dns/bin like the other tools; PEBBLE_BIN picks another
# binary instead (Debian's package, 2.4.0, works too: PEBBLE_BIN=/usr/bin/pebble).
#
# Environment: PEBBLE_WFE_NONCEREJECT (default 0: no nonce is rejected at random),
# PEBBLE_VA_NOSLEEP (default 1: validate at once), PEBBLE_AUTHZREUSE (default 0: every order
# gets fresh challenges, so each issuance really runs DNS-01); a value already set wins, and
# any other PEBBLE_* variable is passed through.
#
# DIR holds pebble-config.json, the TLS key pair and CA, pebble.log, pebble.pid and the ports.
# Everything but the result line goes to stderr.
set -euo pipefail

say() { printf '[pebble] %s\n' "$*" >&2; }
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() {
  echo "usage: $0 start DIR DNS_SERVER_ADDR | root DIR | stop DIR | build | path" >&2
  exit 2
}

PEBBLE_VERSION=${PEBBLE_VERSION:-v2.10.3}
BIN=${XDG_CACHE_HOME:-$HOME/.cache}/kube-acme-dns/bin

binary_path() { echo "${PEBBLE_BIN:-$BIN/pebble-$PEBBLE_VERSION}"; }

build_pebble() {
  local out gobin
  out=$(binary_path)
  if [[ -n ${PEBBLE_BIN:-} ]]; then
    [[ -x $out ]] || { say "PEBBLE_BIN=$out is not an executable"; exit 1; }
    return 0
  fi
  [[ -x $out ]] && return 0
  command -v go >/dev/null || { say "Go is required to build Pebble (https://go.dev/doc/install)"; exit 1; }
  say "building pebble $PEBBLE_VERSION (first time only)"
  mkdir -p "$BIN"
  gobin=$(mktemp -d)
  # Its go.mod has no replace directives, so a plain go install works.
  with_progress pebble env GOBIN="$gobin" go install -trimpath -ldflags=-s \
    "github.com/letsencrypt/pebble/v2/cmd/pebble@$PEBBLE_VERSION"
  mv "$gobin/pebble" "$out"
  rmdir "$gobin"
}

log_tail() {
  if [[ -s $DIR/pebble.log ]]; then
    say "pebble log ($DIR/pebble.log), last lines:"
    tail -n 20 "$DIR/pebble.log" >&2
  fi
}

# pid of our pebble for DIR if it is running, else nothing (and status 1).
running_pid() {
  local pid
  [[ -f $DIR/pebble.pid ]] || return 1
  pid=$(<"$DIR/pebble.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Only a process started with this DIR's config counts (pids get reused).
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$DIR/pebble-config.json" || return 1
  echo "$pid"
}

# N distinct free TCP ports on 127.0.0.1: bind them all to port 0 at once, then release them.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# A CA of its own and a server certificate for localhost/127.0.0.1/::1 signed by it: the CA is
# what clients trust (the bundle printed by start).
make_tls() {
  [[ -s $DIR/pebble-ca.pem && -s $DIR/pebble-tls.pem && -s $DIR/pebble-tls.key ]] && return 0
  new_key "$DIR/pebble-ca.key"
  openssl req -x509 -new -key "$DIR/pebble-ca.key" -out "$DIR/pebble-ca.pem" -days 365 \
    -subj "/CN=kube-acme-dns e2e pebble HTTPS CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  new_key "$DIR/pebble-tls.key"
  openssl req -new -key "$DIR/pebble-tls.key" -subj "/CN=localhost" -out "$DIR/pebble-tls.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
    "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" >"$DIR/pebble-tls.ext"
  openssl x509 -req -in "$DIR/pebble-tls.csr" -CA "$DIR/pebble-ca.pem" -CAkey "$DIR/pebble-ca.key" \
    -CAcreateserial -days 365 -extfile "$DIR/pebble-tls.ext" -out "$DIR/pebble-tls.pem" 2>/dev/null
  rm -f "$DIR/pebble-tls.csr" "$DIR/pebble-tls.ext" "$DIR/pebble-ca.srl"
  chmod 600 "$DIR/pebble-ca.key" "$DIR/pebble-tls.key"
}

write_config() { # ACME_PORT MGMT_PORT HTTP01_PORT TLSALPN01_PORT
  # httpPort/tlsPort are where Pebble would connect for HTTP-01 and TLS-ALPN-01; only DNS-01
  # is used here, so they are free ports nothing listens on.
  cat >"$DIR/pebble-config.json" <<EOF
{
  "pebble": {
    "listenAddress": "127.0.0.1:$1",
    "managementListenAddress": "127.0.0.1:$2",
    "certificate": "$DIR/pebble-tls.pem",
    "privateKey": "$DIR/pebble-tls.key",
    "httpPort": $3,
    "tlsPort": $4,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }
}
EOF
}

mgmt_get() { # PATH
  curl -sSf --max-time 5 --cacert "$DIR/pebble-ca.pem" "https://127.0.0.1:$(<"$DIR/management.port")$1"
}

fetch_root() {
  local tmp=$DIR/pebble-root.pem.tmp
  mgmt_get /roots/0 >"$tmp" || { say "could not fetch /roots/0 from Pebble's management port"; rm -f "$tmp"; return 1; }
  openssl x509 -noout -in "$tmp" 2>/dev/null || { say "/roots/0 did not return a PEM certificate"; rm -f "$tmp"; return 1; }
  mv "$tmp" "$DIR/pebble-root.pem"
}

cmd_start() {
  local dns=$1 pid attempt i acme mgmt http tls url
  [[ $dns =~ ^(127\.[0-9]+\.[0-9]+\.[0-9]+|\[::1\]):[0-9]+$ ]] ||
    { say "DNS_SERVER_ADDR must be a loopback ADDR:PORT (127.0.0.1:5353 or [::1]:5353): $dns"; exit 1; }
  ensure_debian_packages openssl curl python3
  build_pebble
  if pid=$(running_pid); then
    say "pebble for $DIR is already running (pid $pid, $(cat "$DIR/directory-url" 2>/dev/null)); stop it first"
    exit 1
  fi
  make_tls

  for attempt in 1 2 3; do
    read -r acme mgmt http tls < <(free_ports 4)
    write_config "$acme" "$mgmt" "$http" "$tls"
    echo "$mgmt" >"$DIR/management.port"
    url="https://127.0.0.1:$acme/dir"
    echo "$url" >"$DIR/directory-url"
    : >"$DIR/pebble.log"
    env PEBBLE_WFE_NONCEREJECT="${PEBBLE_WFE_NONCEREJECT:-0}" \
      PEBBLE_VA_NOSLEEP="${PEBBLE_VA_NOSLEEP:-1}" \
      PEBBLE_AUTHZREUSE="${PEBBLE_AUTHZREUSE:-0}" \
      "$(binary_path)" -config "$DIR/pebble-config.json" -dnsserver "$dns" \
      </dev/null >"$DIR/pebble.log" 2>&1 &
    pid=$!
    echo "$pid" >"$DIR/pebble.pid"
    for ((i = 0; i < 200; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      if curl -sf --max-time 2 --cacert "$DIR/pebble-ca.pem" "$url" >/dev/null 2>&1 &&
        mgmt_get /roots/0 >/dev/null 2>&1; then
        fetch_root
        echo "$url $DIR/pebble-ca.pem"
        return 0
      fi
      sleep 0.1
    done
    if grep -q 'address already in use' "$DIR/pebble.log" 2>/dev/null && ((attempt < 3)); then
      say "a port was taken, retrying with others"
      cmd_stop
      continue
    fi
    say "pebble did not answer at $url"
    log_tail
    cmd_stop
    exit 1
  done
}

cmd_root() {
  running_pid >/dev/null || { say "pebble for $DIR is not running"; exit 1; }
  fetch_root
  echo "$DIR/pebble-root.pem"
}

cmd_stop() {
  local pid i
  if pid=$(running_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "pebble $pid did not stop on TERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/pebble.pid"
}

case ${1:-} in
  build) (($# == 1)) || usage; build_pebble; exit 0 ;;
  path) (($# == 1)) || usage; binary_path; exit 0 ;;
esac
(($# >= 2)) || usage
CMD=$1
[[ -n $2 ]] || usage
if [[ $CMD == start ]]; then mkdir -p "$2"; fi
if [[ ! -d $2 ]]; then
  [[ $CMD == stop ]] && exit 0 # nothing was ever started there
  say "not a directory: $2"
  exit 1
fi
DIR=$(cd "$2" && pwd)
shift 2

case $CMD in
  start) (($# == 1)) || usage; cmd_start "$1" ;;
  root) (($# == 0)) || usage; cmd_root ;;
  stop) (($# == 0)) || usage; cmd_stop ;;
  *) usage ;;
esac
