#!/usr/bin/env bash
# `make run`: a local control plane, the CRD, a sample AcmeDnsAccount, and
# `kube-acme-dns serve` in the foreground against it. The control plane keeps running
# after serve stops; `make cluster-down` stops it.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$(dirname "$E2E")"
say() { printf '[run] %s\n' "$*" >&2; }

say "building kube-acme-dns"
cargo build --quiet
BIN=target/debug/kube-acme-dns

e2e/cluster.sh up
eval "$(e2e/cluster.sh env)"

say "installing the AcmeDnsAccount CRD"
"$BIN" crd | kubectl apply --server-side -f - >/dev/null
kubectl wait --for condition=Established --timeout=30s crd/acmednsaccounts.acmedns.io >/dev/null
say "applying the sample account deploy/examples/acmednsaccount.yaml"
kubectl apply --server-side -f deploy/examples/acmednsaccount.yaml >/dev/null

METRICS_ADDR=${KUBE_ACME_DNS_METRICS_ADDR:-127.0.0.1:9090}
cat >&2 <<TXT

  kube-apiserver: $(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  CRD:            $(kubectl get crd acmednsaccounts.acmedns.io -o name)
  accounts:
$(kubectl get acmedns -A | sed 's/^/    /')

  Try, in another shell:
    eval "\$(make -s cluster-env)"
    kubectl get acmedns -A
    kubectl explain acmednsaccount.spec
    curl -s http://$METRICS_ADDR/readyz; curl -s http://$METRICS_ADDR/metrics | grep kube_acme_dns
  Stop serve with Ctrl-C; stop the control plane with: make cluster-down

TXT
say "starting kube-acme-dns serve (Ctrl-C to stop)"
export KUBE_ACME_DNS_METRICS_ADDR=$METRICS_ADDR
exec "$BIN" serve
