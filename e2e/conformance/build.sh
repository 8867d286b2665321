#!/usr/bin/env bash
# Builds cert-manager's DNS01 conformance suite (conformance_test.go beside this script, with
# cert-manager's github.com/cert-manager/cert-manager/test/acme from the Go module proxy) into a
# test binary, cached so a second run, or a fresh clone on the same machine, reuses it.
#
#   e2e/conformance/build.sh [build]   build if needed; prints nothing but progress (stderr)
#   e2e/conformance/build.sh path      print the binary's path (built or not)
#   e2e/conformance/build.sh version   print the cert-manager version in go.mod
#
# The binary is named after the cert-manager version and a digest of go.mod, go.sum and
# conformance_test.go, so any change to them gives a new binary.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODULE=github.com/cert-manager/cert-manager

say() { printf '[conformance] %s\n' "$*" >&2; }
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
BIN=$KAD_CACHE_BIN

version() {
  local v
  v=$(awk -v m="$MODULE" '($1 == m || ($1 == "require" && $2 == m)) { print $NF; exit }' "$HERE/go.mod")
  [[ -n $v ]] || { say "no $MODULE requirement in $HERE/go.mod"; exit 1; }
  echo "$v"
}

sources_digest() {
  cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/conformance_test.go" | sha256sum | cut -c1-12
}

binary_path() { echo "$BIN/cert-manager-conformance-$(version)-$(sources_digest)"; }

build() {
  local out
  out=$(binary_path)
  [[ -x $out ]] && return 0
  need_go
  mkdir -p "$BIN"
  # One build at a time: a second caller waits here, then finds the binary.
  exec 9>"$BIN/.cert-manager-conformance.lock"
  flock 9
  if [[ ! -x $out ]]; then
    say "building cert-manager-conformance $(version) (first time only; takes a few minutes)"
    # -trimpath as in e2e/cert-manager/build.sh, so the two share Go's build cache.
    (cd "$HERE" && with_progress cert-manager-conformance \
      go test -c -trimpath -ldflags=-s -o "$out.tmp" ./)
    mv "$out.tmp" "$out"
  fi
  flock -u 9
}

case ${1:-build} in
  build) build ;;
  path) binary_path ;;
  version) version ;;
  *) echo "usage: $0 [build|path|version]" >&2; exit 2 ;;
esac
