#!/usr/bin/env bash
# `make bench-issuance`: tests/bench_issuance.rs against the local control plane (started for
# the run and stopped after it, unless it was already up). Seconds from Certificate creation
# to Ready through Pebble and cert-manager's own controllers, for our webhook solver and for
# cert-manager's RFC 2136 solver writing to BIND, in the same run, and the part each DNS
# server adds (Present → answerable). Writes bench/results/issuance-<date>.md (or
# ISSUANCE_RESULTS).
#
# Settings (environment):
#   ISSUANCE_CERTIFICATES=5   Certificates per solver (each for a domain and its wildcard)
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
cd "$ROOT"
say() { printf '[bench-issuance] %s\n' "$*" >&2; }
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"

# unbound: the resolver; bind9: named, the RFC 2136 side; openssl checks what was issued.
ensure_debian_packages unbound bind9 bind9-utils openssl


say "building cert-manager's controllers and Pebble (Go; first time only, a few minutes)"
e2e/cert-manager/build.sh
e2e/pebble.sh build

say "building the release binary and the benchmark (the first build takes several minutes)"
cargo test --release --no-run --quiet --test bench_issuance 2>&1 | grep -v '^\s*Executable' >&2 || true

use_local_cluster bench-issuance

say "${ISSUANCE_CERTIFICATES:-5} Certificates per solver, one of each at a time (about 2 minutes a round); progress below"
cargo test --release --quiet --test bench_issuance -- --ignored --nocapture
