#!/usr/bin/env bash
# `make bench-scale`: tests/scale.rs against the local control plane (started for the run
# and stopped after it, unless it was already up): SCALE_ACCOUNTS AcmeDnsAccounts (default
# 100 000) served by two replicas of the release binary with every role. Measures start →
# ready, resident memory (at ready, after the controller's first pass, after dnsperf, after
# SCALE_HOLD_MINUTES of light load), DNS answers per second on random account names,
# update → answer on both replicas and Presents per second. Writes
# bench/results/scale-<date>.md (or SCALE_RESULTS).
#
# Settings (environment):
#   SCALE_ACCOUNTS=100000     accounts
#   SCALE_HOLD_MINUTES=10     minutes held under light DNS load at the end
#   SCALE_NAMESPACE=bench-scale
#                             where the accounts live; they are kept when the control plane
#                             was already up, so the next run skips making them
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
cd "$ROOT"
say() { printf '[bench-scale] %s\n' "$*" >&2; }
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"

ensure_debian_packages dnsperf

say "building the release binary and the benchmark (the first build takes several minutes)"
cargo test --release --no-run --quiet --test scale 2>&1 | grep -v '^\s*Executable' >&2 || true

use_local_cluster bench-scale

say "${SCALE_ACCOUNTS:-100000} accounts; progress below"
cargo test --release --quiet --test scale -- --ignored --nocapture
