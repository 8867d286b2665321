#!/usr/bin/env bash
# `make soak`: tests/soak.rs against a local control plane (started for the run and
# stopped after it, unless it was already up): two replicas of the release binary under
# DNS load, Present/CleanUp cycles through the webhook and account churn, for
# SOAK_MINUTES (default 30, at most 30). Writes bench/results/soak-<date>.md (or
# SOAK_RESULTS) with resident memory, file descriptors, threads and async tasks over
# time, and fails on a lost update, an unanswered query or growth without bound.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$(dirname "$E2E")"
say() { printf '[soak] %s\n' "$*" >&2; }

started_cluster=false
cleanup() {
  if $started_cluster; then
    e2e/cluster.sh down >/dev/null 2>&1 || say "could not stop the local control plane: run e2e/cluster.sh down"
  fi
}
trap cleanup EXIT

say "building the release binary and the soak test (the first build takes several minutes)"
cargo test --release --no-run --quiet --test soak 2>&1 | grep -v '^\s*Executable' >&2 || true

if ! e2e/cluster.sh status >/dev/null 2>&1; then
  say "starting the local control plane"
  started_cluster=true
  e2e/cluster.sh up
fi
eval "$(e2e/cluster.sh env)"

say "soaking for ${SOAK_MINUTES:-30} minutes; a line of samples every 30 s"
cargo test --release --quiet --test soak -- --ignored --nocapture
