#!/usr/bin/env bash
# `make test`: lint, then every test this machine can run, against a local control plane
# started for the run (and stopped after it, unless it was already up). Ends with one
# line `tests: N passed, N failed` counting every test that ran.
#
# Arguments go to `cargo test` (`make e2e` passes `--test issuance --test conformance
# --test webhook`).
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$(dirname "$E2E")"
say() { printf '[test] %s\n' "$*" >&2; }

passed=0
failed=0
record() { if [[ $1 == 0 ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi; }

started_cluster=false
cleanup() {
  if $started_cluster; then
    e2e/cluster.sh down >/dev/null 2>&1 || say "could not stop the local control plane: run e2e/cluster.sh down"
  fi
}
trap cleanup EXIT

summary() { echo "tests: $passed passed, $failed failed"; }

say "lint: cargo fmt --check, cargo clippy --all-targets -D warnings"
if ! cargo fmt --check || ! cargo clippy --quiet --all-targets -- -D warnings; then
  say "lint failed: run cargo fmt and fix the clippy findings above"
  failed=1
  summary
  exit 1
fi

say "fuzz targets: build them (nightly, libFuzzer; the first build takes many minutes) and run each for a few seconds"
set +e
e2e/fuzz.sh --smoke
record $?
set -e

say "building cert-manager's controllers, Pebble, cert-manager's conformance suite and lego (Go; first time only, a few minutes)"
e2e/cert-manager/build.sh
e2e/pebble.sh build
e2e/conformance/build.sh
e2e/tools.sh lego
say "building the image the node runs (the release binary; the first build takes many minutes)"
e2e/image.sh --no-load >/dev/null

say "building the tests"
cargo test --no-run --quiet 2>&1 | grep -v '^\s*Executable' >&2 || true

if ! e2e/cluster.sh status >/dev/null 2>&1; then
  say "starting the local control plane"
  started_cluster=true
  e2e/cluster.sh up
fi
eval "$(e2e/cluster.sh env)"
# A control plane left up by hand may have lost its node (or predate it): (re)start it.
e2e/node.sh up

say "aggregation layer: an APIService reaches an HTTPS server on loopback"
set +e
e2e/aggregation-check.sh
record $?
set -e

say "cargo test (unit tests, and integration tests against the control plane)"
log=$(mktemp)
# What tests measure (tests/common/mod.rs `report`), printed once they are done: cargo
# shows a passing test's own output only when asked.
KAD_TEST_REPORT=$(mktemp)
export KAD_TEST_REPORT
set +e
cargo test --no-fail-fast "$@" 2>&1 | tee "$log"
cargo_rc=${PIPESTATUS[0]}
set -e
if [[ -s $KAD_TEST_REPORT ]]; then
  say "measured by the tests:"
  sed 's/^/  /' "$KAD_TEST_REPORT"
fi
rm -f "$KAD_TEST_REPORT"
# Sum cargo's per-binary "test result:" lines so the run ends with one total.
read -r cp cf < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } } END { print p+0, f+0 }' "$log")
rm -f "$log"
passed=$((passed + cp))
failed=$((failed + cf))
if [[ $cargo_rc != 0 && $cf == 0 ]]; then
  failed=$((failed + 1)) # cargo failed before running tests (a build error)
fi

summary
[[ $failed == 0 ]]
