#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing of the parsers that read untrusted input, with
# cargo-fuzz (libFuzzer, AddressSanitizer, nightly Rust). The targets are in fuzz/:
#   dns_answer         DNS query bytes → the answer function (UDP and TCP)
#   challenge_payload  the cert-manager webhook's ChallengePayload body
#   acme_api           the acme-dns API's /register and /update bodies and headers
#   crd_values         apex, static records, identity, labels, CIDRs, account specs
#
#   e2e/fuzz.sh           full run: dns_answer for FUZZ_DNS_RUNS executions, the others
#                         for FUZZ_SECONDS each; writes bench/results/fuzz-<date>.md
#   e2e/fuzz.sh --smoke   every target for FUZZ_SMOKE_SECONDS, no results file: keeps
#                         the targets building and running
#
# Settings (environment):
#   FUZZ_DNS_RUNS=10000000   executions of dns_answer in a full run
#   FUZZ_SECONDS=300         length of each other target's full run
#   FUZZ_SMOKE_SECONDS=5     length of each target's smoke run
#   FUZZ_RESULTS=path        results file (default bench/results/fuzz-<date>.md)
#   FUZZ_TARGET_DIR=path     where the instrumented builds go (default
#                            ${XDG_CACHE_HOME:-$HOME/.cache}/kube-acme-dns/fuzz-target, kept
#                            between runs and checkouts: the first build takes many minutes)
#
# The corpora libFuzzer grows are kept in fuzz/corpus/<target> (not committed) and reused
# by the next run; the committed seeds are in fuzz/seeds/<target>. A crash fails the run
# and names the input that caused it, kept in fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$E2E")
say() { printf '[fuzz] %s\n' "$*" >&2; }
# shellcheck source=e2e/lib.sh
source "$E2E/lib.sh"

SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) say "usage: $0 [--smoke]"; exit 2 ;;
esac

TARGETS=(dns_answer challenge_payload acme_api crd_values)
DNS_RUNS=${FUZZ_DNS_RUNS:-10000000}
SECONDS_EACH=${FUZZ_SECONDS:-300}
SMOKE_SECONDS=${FUZZ_SMOKE_SECONDS:-5}
DATE=$(date -u +%F)
RESULTS=${FUZZ_RESULTS:-$ROOT/bench/results/fuzz-$DATE.md}
TARGET_DIR=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-acme-dns/fuzz-target}

cd "$ROOT"

if ! rustup toolchain list | grep -q '^nightly'; then
  say "installing the nightly toolchain (cargo-fuzz needs it for the sanitizers)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo +nightly install cargo-fuzz --locked
fi

with_progress "fuzz targets" cargo +nightly fuzz build --target-dir "$TARGET_DIR"

LOGS=$TARGET_DIR/logs
mkdir -p "$LOGS"
declare -A EXECS COV SECS STATUS
failed=()

# Runs one target with libFuzzer's arguments after the name; keeps its log and reads its
# final statistics.
run_target() {
  local target=$1; shift
  local log=$LOGS/$target.log start=$SECONDS rc=0
  mkdir -p "fuzz/corpus/$target"
  say "$target: $*"
  cargo +nightly fuzz run --target-dir "$TARGET_DIR" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -print_final_stats=1 "$@" >"$log" 2>&1 || rc=$?
  SECS[$target]=$((SECONDS - start))
  EXECS[$target]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  COV[$target]=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  EXECS[$target]=${EXECS[$target]:-?}
  COV[$target]=${COV[$target]:-?}
  if ((rc == 0)); then
    STATUS[$target]="none"
    say "$target: ${EXECS[$target]} executions in ${SECS[$target]} s, cov ${COV[$target]}"
  else
    local artifact
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
    STATUS[$target]="**crash**: \`${artifact:-see $log}\`"
    failed+=("$target")
    tail -n 40 "$log" >&2
    say "$target: FAILED (exit $rc); input: ${artifact:-none written}; log: $log"
  fi
}

for target in "${TARGETS[@]}"; do
  if ((SMOKE)); then
    run_target "$target" "-max_total_time=$SMOKE_SECONDS"
  elif [[ $target == dns_answer ]]; then
    run_target "$target" "-runs=$DNS_RUNS"
  else
    run_target "$target" "-max_total_time=$SECONDS_EACH"
  fi
done

if ((!SMOKE)); then
  mkdir -p "$(dirname "$RESULTS")"
  # shellcheck disable=SC2016 # the backquotes are Markdown
  {
    printf '# Fuzzing — %s\n\n' "$DATE"
    printf 'Written by `e2e/fuzz.sh` (`make fuzz`), finished %s UTC, at %s.\n\n' \
      "$(date -u '+%F %H:%M')" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf '## Machine\n\n'
    printf -- '- `uname -a`: %s\n' "$(uname -a)"
    printf -- '- `nproc`: %s\n' "$(nproc)"
    printf -- '- Load average (1/5/15 min) at end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- Toolchain: %s; %s\n\n' "$(rustc +nightly --version)" "$(cargo +nightly fuzz --version)"
    printf '## Settings\n\n'
    printf -- '- libFuzzer through cargo-fuzz, AddressSanitizer, debug assertions on, one job per target.\n'
    printf -- '- `dns_answer` for %s executions; the other targets for %s s each.\n' "$DNS_RUNS" "$SECONDS_EACH"
    printf -- '- Each run starts from the committed seeds (`fuzz/seeds/`) and the corpus of earlier runs on this machine (`fuzz/corpus/`).\n'
    printf -- '- Coverage is libFuzzer'"'"'s `cov:` at the end of the run: instrumented edges reached.\n\n'
    printf '## Results\n\n'
    printf '| target | executions | seconds | coverage (edges) | crashes |\n'
    printf '|---|---:|---:|---:|---|\n'
    for target in "${TARGETS[@]}"; do
      printf '| `%s` | %s | %s | %s | %s |\n' "$target" "${EXECS[$target]}" "${SECS[$target]}" \
        "${COV[$target]}" "${STATUS[$target]}"
    done
  } >"$RESULTS"
  say "results: $RESULTS"
fi

if ((${#failed[@]})); then
  say "crashes in: ${failed[*]}"
  exit 1
fi
say "no crashes"
