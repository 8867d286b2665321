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
# shellcheck source=e2e/lib.sh
source "$E2E/lib.sh"

say "building the release binary and the soak test (the first build takes several minutes)"
cargo test --release --no-run --quiet --test soak 2>&1 | grep -v '^\s*Executable' >&2 || true

use_local_cluster soak

say "soaking for ${SOAK_MINUTES:-30} minutes; a line of samples every 30 s"
cargo test --release --quiet --test soak -- --ignored --nocapture
