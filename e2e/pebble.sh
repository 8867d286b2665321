#!/usr/bin/env bash
# Builds Pebble, Let's Encrypt's small ACME test server, for the issuance test, which starts
# and stops it itself (tests/common/pebble.rs).
#
#   e2e/pebble.sh build   build Pebble if needed (progress only)
#   e2e/pebble.sh path    print the binary's path
#
# Pebble is built from its Go module (github.com/letsencrypt/pebble/v2, $PEBBLE_VERSION,
# default v2.10.3: CAA checks, ARI and profiles, as Let's Encrypt runs today) and cached in
# ${XDG_CACHE_HOME:-~/.cache}/kube-acme-dns/bin like the other tools; PEBBLE_BIN picks another
# binary instead (Debian's package, 2.4.0, works too: PEBBLE_BIN=/usr/bin/pebble).
set -euo pipefail

say() { printf '[pebble] %s\n' "$*" >&2; }
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() {
  echo "usage: $0 build | path" >&2
  exit 2
}

PEBBLE_VERSION=${PEBBLE_VERSION:-v2.10.3}

binary_path() { echo "${PEBBLE_BIN:-$KAD_CACHE_BIN/pebble-$PEBBLE_VERSION}"; }

build_pebble() {
  local out gobin
  out=$(binary_path)
  if [[ -n ${PEBBLE_BIN:-} ]]; then
    [[ -x $out ]] || { say "PEBBLE_BIN=$out is not an executable"; exit 1; }
    return 0
  fi
  [[ -x $out ]] && return 0
  need_go
  say "building pebble $PEBBLE_VERSION (first time only)"
  mkdir -p "$KAD_CACHE_BIN"
  gobin=$(mktemp -d)
  # Its go.mod has no replace directives, so a plain go install works.
  with_progress pebble env GOBIN="$gobin" go install -trimpath -ldflags=-s \
    "github.com/letsencrypt/pebble/v2/cmd/pebble@$PEBBLE_VERSION"
  mv "$gobin/pebble" "$out"
  rmdir "$gobin"
}

(($# == 1)) || usage
case $1 in
  build) build_pebble ;;
  path) binary_path ;;
  *) usage ;;
esac
