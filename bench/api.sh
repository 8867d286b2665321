#!/usr/bin/env bash
# `make bench-api`: the acme-dns API under load. Two replicas of the release binary
# (`serve --roles dns,controller,api`, bcrypt cost 10 as acme-dns uses) run against the
# local control plane; the `bench_api` example registers accounts, then sends /update
# from several clients to the replicas in turn and polls both replicas' DNS for each new
# value. Reports /update throughput and latency, and update→answer latency on the
# replica that took the update and on the other one; then DNS latency on one replica with
# the API quiet and during a storm of /update calls with bad credentials.
#
# Writes bench/results/api-<date>.md. Logs of the run: bench/.work/api/.
#
# Settings (environment):
#   BENCH_ACCOUNTS=40 BENCH_CLIENTS=8 BENCH_SECONDS=30
#   BENCH_STORM_SECONDS=20 BENCH_STORM_CLIENTS=32 BENCH_PROBE_RATE=500
#                          the bad-credential storm: each phase's length, the clients
#                          sending bad credentials, DNS queries per second measured
#   BENCH_BCRYPT_COST=10
#   BENCH_RESULTS=path     results file (default bench/results/api-<date>.md)
#   BENCH_BIN=path         the server binary measured (default: this checkout's release
#                          build), e.g. to compare two builds on the same machine
#   CARGO=cargo
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
ACCOUNTS=${BENCH_ACCOUNTS:-40}
CLIENTS=${BENCH_CLIENTS:-8}
SECONDS_=${BENCH_SECONDS:-30}
COST=${BENCH_BCRYPT_COST:-10}
STORM_SECONDS=${BENCH_STORM_SECONDS:-20}
STORM_CLIENTS=${BENCH_STORM_CLIENTS:-32}
PROBE_RATE=${BENCH_PROBE_RATE:-500}
CARGO=${CARGO:-cargo}
TODAY=$(date +%F)
RESULTS=${BENCH_RESULTS:-$BENCH/results/api-$TODAY.md}
WORK=$BENCH/.work/api
ZONE=auth.example.test

say() { printf '[bench-api] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
cd "$ROOT"

rm -rf "$WORK"
mkdir -p "$WORK" "$(dirname "$RESULTS")"

say "building the release binary and the load generator (the first time takes several minutes)"
"$CARGO" build --release --quiet --bin kube-acme-dns --example bench_api
BIN=${BENCH_BIN:-$ROOT/target/release/kube-acme-dns}
LOAD=$ROOT/target/release/examples/bench_api

started_cluster=false
pids=()
cleanup() {
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  if [[ -n ${NAMESPACE:-} ]]; then
    kubectl delete namespace "$NAMESPACE" --wait=false >/dev/null 2>&1 || true
  fi
  if $started_cluster; then e2e/cluster.sh down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if ! e2e/cluster.sh status >/dev/null 2>&1; then
  say "starting the local control plane"
  started_cluster=true
  e2e/cluster.sh up
fi
eval "$(e2e/cluster.sh env)"

"$BIN" crd | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established crd/acmednsaccounts.acmedns.io --timeout=60s >/dev/null
NAMESPACE=bench-api-$(date +%s)
kubectl create namespace "$NAMESPACE" >/dev/null

ports=()
while ((${#ports[@]} < 6)); do
  p=$(free_port)
  [[ " ${ports[*]} " == *" $p "* ]] || ports+=("$p")
done
read -r DNS1 DNS2 API1 API2 MET1 MET2 <<<"${ports[*]}"
replica() { # N DNS API METRICS
  KUBECONFIG=$KUBECONFIG RUST_LOG=warn "$BIN" serve --zone "$ZONE" \
    --roles dns,controller,api --watch-namespace "$NAMESPACE" \
    --leader-election-namespace "$NAMESPACE" --leader-election-lease bench-api \
    --nameserver-address 127.0.0.1 --delegation-resolver 127.0.0.1:9 \
    --dns-addr "127.0.0.1:$2" --api-addr "127.0.0.1:$3" --metrics-addr "127.0.0.1:$4" \
    --api-namespace "$NAMESPACE" --api-bcrypt-cost "$COST" --api-register-burst 0 \
    --rrl-rate 0 \
    </dev/null >"$WORK/replica-$1.log" 2>&1 &
  pids+=($!)
}
replica 1 "$DNS1" "$API1" "$MET1"
replica 2 "$DNS2" "$API2" "$MET2"
for m in "$MET1" "$MET2"; do
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$m/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$m/readyz" >/dev/null || die "a replica did not become ready; see $WORK/replica-*.log"
done

say "load: $ACCOUNTS accounts, $CLIENTS clients, $SECONDS_ s, bcrypt cost $COST"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
"$LOAD" --api "127.0.0.1:$API1" --api "127.0.0.1:$API2" \
  --dns "127.0.0.1:$DNS1" --dns "127.0.0.1:$DNS2" --zone "$ZONE" \
  --accounts "$ACCOUNTS" --clients "$CLIENTS" --seconds "$SECONDS_" \
  --storm-seconds "$STORM_SECONDS" --storm-clients "$STORM_CLIENTS" --probe-rate "$PROBE_RATE" |
  tee "$WORK/table.md"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
rss() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
rss1=$(rss "${pids[0]}")
rss2=$(rss "${pids[1]}")
hist() { curl -s "http://127.0.0.1:$1/metrics" | grep -E '^kube_acme_dns_api_requests_total' || true; }

os_name=$(. /etc/os-release && echo "$PRETTY_NAME")
{
  echo "# acme-dns API under load — $TODAY"
  echo
  echo "Written by \`bench/api.sh\` (\`make bench-api\`), run started $(date -u '+%F %H:%M') UTC, at $(git rev-parse --short HEAD)."
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), \`nproc\` = $(nproc)"
  echo "- Memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "- Kernel: $(uname -r) ($os_name)"
  echo "- Load average (1/5/15 min) at start: $load_before; at end: $load_after"
  if awk -v l="${load_before%% *}" 'BEGIN { exit !(l > 1.5) }'; then
    echo
    echo "**Disturbed:** other work was running on the machine when this run started (load average above);"
    echo "the numbers are pessimistic."
  fi
  echo
  echo "## Settings"
  echo
  echo "- Two replicas of \`${BENCH_BIN:-target/release/kube-acme-dns} serve --roles dns,controller,api\`, bcrypt cost $COST,"
  echo "  bcrypt concurrency one per CPU (the default), against the local control plane (etcd + kube-apiserver)"
  echo "  on the same machine; everything on 127.0.0.1. Response rate limiting is off (\`--rrl-rate 0\`): every"
  echo "  query comes from one address, far faster than one network asks a real server."
  echo "- $ACCOUNTS accounts registered through replica 1; every replica must accept an update for every account"
  echo "  before the clock starts. Then $CLIENTS clients, each on keep-alive connections, send \`/update\` for $SECONDS_ s,"
  echo "  to the two replicas in turn, no two clients on the same account at once. After each accepted update,"
  echo "  both replicas' DNS is polled every 2 ms until it answers the new value."
  echo "- \"sent → answered\" is from sending \`/update\` to the first poll that sees the value; on the replica"
  echo "  that took the update it is at most the \`/update\` latency plus one poll (the update returns only once"
  echo "  that replica answers it). \"returned → answered\" is from \`/update\` returning to the other replica"
  echo "  answering: what the watch adds (the project's update→answer measure; target p99 < 1 s)."
  echo "- The second table: one client queries replica 1's DNS for the accounts' TXT names, $PROBE_RATE queries/s,"
  echo "  one at a time, for $STORM_SECONDS s with the API quiet, then for $STORM_SECONDS s while $STORM_CLIENTS clients send"
  echo "  replica 1 \`/update\`s with bad credentials as fast as it answers (half known users with a wrong key,"
  echo "  half unknown users; each costs one bcrypt check). The storm runs 2 s before the clock starts."
  echo
  echo "## Results"
  echo
  cat "$WORK/table.md"
  echo
  echo "Resident memory after the run: replica 1 $rss1 MiB, replica 2 $rss2 MiB."
  echo
  echo "## What limits it"
  echo
  echo "- Each \`/update\` checks a bcrypt hash at cost $COST; on this machine both replicas and the load generator"
  echo "  share $(nproc) cores, so throughput is about (cores ÷ one bcrypt check), and latency is mostly waiting for a"
  echo "  bcrypt slot. The write itself is one status update through the API server, and the other replica"
  echo "  answers as soon as its watch delivers the change."
  echo "- During the storm, the bcrypt checks take every core the DNS threads leave; they run at nice 10 on"
  echo "  threads of their own, so the kernel gives a DNS thread about ten times their share when both want a"
  echo "  core. What is left of the storm's effect on DNS latency is the probe and the server sharing"
  echo "  $(nproc) cores with the storm's clients and the API's HTTP work (at normal priority)."
  echo
  echo "Counters after the run (replica 1, replica 2):"
  echo
  echo '```'
  hist "$MET1"
  hist "$MET2"
  echo '```'
} >"$RESULTS"
say "results written to $RESULTS"
