#!/usr/bin/env bash
# `make run`: a local control plane, the CRD, a sample AcmeDnsAccount, a local Knot
# server holding the user's zone (example.test) for the delegation check, and
# `kube-acme-dns serve` in the foreground against it all. The control plane keeps
# running after serve stops; `make cluster-down` stops it.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$(dirname "$E2E")"
say() { printf '[run] %s\n' "$*" >&2; }
# shellcheck source=e2e/lib.sh
source "$E2E/lib.sh"

say "building kube-acme-dns"
cargo build --quiet
BIN=target/debug/kube-acme-dns

e2e/cluster.sh up
eval "$(e2e/cluster.sh env)"
STATE=${KAD_CLUSTER_DIR:-$E2E/.state}

say "installing the AcmeDnsAccount CRD"
"$BIN" crd | kubectl apply --server-side -f - >/dev/null
kubectl wait --for condition=Established --timeout=30s crd/acmednsaccounts.acmedns.io >/dev/null
say "applying the sample account deploy/examples/acmednsaccount.yaml"
kubectl apply --server-side -f deploy/examples/acmednsaccount.yaml >/dev/null

# The user's own DNS zone, without the _acme-challenge CNAME yet: the account's
# Delegated condition says what to publish. Everything stays on loopback.
KNOT_DIR=$STATE/knot
rm -rf "$KNOT_DIR"
mkdir -p "$KNOT_DIR/db"
cat >"$KNOT_DIR/example.test.zone" <<'ZONE'
$ORIGIN example.test.
$TTL 60
@ SOA ns.example.test. hostmaster.example.test. 1 60 60 600 60
@ NS ns.example.test.
ns A 127.0.0.1
ZONE
KNOT_PORT=$(free_port)
# Block-style YAML only: knotd rejects flow maps.
cat >"$KNOT_DIR/knot.conf" <<CONF
server:
    rundir: "$KNOT_DIR"
    listen: 127.0.0.1@$KNOT_PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: info
database:
    storage: "$KNOT_DIR/db"
template:
  - id: default
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: example.test.
    file: "$KNOT_DIR/example.test.zone"
CONF
"$(command -v knotd || echo /usr/sbin/knotd)" -c "$KNOT_DIR/knot.conf" </dev/null >"$KNOT_DIR/knotd.log" 2>&1 &
KNOT_PID=$!
trap 'stop_pid "$KNOT_PID"' EXIT
wait_soa knotd "$KNOT_PID" "$KNOT_PORT" example.test. "$KNOT_DIR/knotd.log"

DNS_ADDR=${KUBE_ACME_DNS_DNS_ADDR:-127.0.0.1:5353}
METRICS_ADDR=${KUBE_ACME_DNS_METRICS_ADDR:-127.0.0.1:9090}
cat >&2 <<TXT

  kube-apiserver: $(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  CRD:            $(kubectl get crd acmednsaccounts.acmedns.io -o name)
  accounts:
$(kubectl get acmedns -A | sed 's/^/    /')

  DNS (zone auth.example.test) on $DNS_ADDR; the user's zone example.test in Knot on 127.0.0.1:$KNOT_PORT.
  Try, in another shell:
    eval "\$(make -s cluster-env)"
    kubectl get acmedns -A                       # FQDN, Delegated, Ready
    kubectl describe acmedns example-test        # conditions and Events say what to publish
    FQDN=\$(kubectl get acmedns example-test -o jsonpath='{.status.fqdn}')
    kubectl patch acmedns example-test --subresource=status --type=merge \\
      -p '{"status":{"txt":[{"value":"hello","updatedAt":"'\$(date -u +%FT%TZ)'"}]}}'
    dig @${DNS_ADDR%:*} -p ${DNS_ADDR##*:} \$FQDN TXT
    curl -s http://$METRICS_ADDR/metrics | grep kube_acme_dns_
  Stop serve with Ctrl-C; stop the control plane with: make cluster-down

TXT
say "starting kube-acme-dns serve (Ctrl-C to stop)"
KUBE_ACME_DNS_DNS_ADDR=$DNS_ADDR KUBE_ACME_DNS_METRICS_ADDR=$METRICS_ADDR \
  "$BIN" serve --nameserver-address 127.0.0.1 --delegation-resolver "127.0.0.1:$KNOT_PORT" \
  --leader-election-namespace default
