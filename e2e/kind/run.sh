#!/usr/bin/env bash
# `make e2e-kind`: the whole flow on a kind cluster, for hosts with Docker (and the CI
# workflow in .github/workflows/e2e-kind.yml). It builds the image from the repository's
# Dockerfile, installs a pinned cert-manager and our chart, runs Pebble and a resolver in
# the cluster, applies a ClusterIssuer, an AcmeDnsAccount and a Certificate for a name
# and its wildcard, waits until the Certificate is Ready, and deletes the cluster.
#
# Needs: docker, kind, kubectl, helm. Settings (environment):
#   KIND_CLUSTER=kad-e2e          cluster name
#   KIND_NODE_IMAGE=              node image (default: the one the kind release pins)
#   CERT_MANAGER_VERSION=v1.21.2  the cert-manager release installed
#   KEEP_CLUSTER=1                keep the cluster afterwards, for a look around
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CLUSTER=${KIND_CLUSTER:-kad-e2e}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.21.2}
IMAGE=kube-acme-dns:e2e
RELEASE=kad
NAMESPACE=kube-acme-dns
TIMEOUT=${E2E_TIMEOUT:-300s}

say() { printf '[e2e-kind] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool is not installed; this flow needs docker, kind, kubectl and helm"
done
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"

# The manifests in manifests/ with their placeholders filled in.
render() { # FILE KEY=VALUE...
  local file=$1 expr=()
  shift
  for kv in "$@"; do expr+=(-e "s|__${kv%%=*}__|${kv#*=}|g"); done
  sed "${expr[@]}" "$HERE/manifests/$file"
}

# What to show when a step fails: the objects and the logs that say why.
diagnose() {
  say "diagnostics:"
  kubectl get pods -A -o wide || true
  kubectl describe certificate,certificaterequest,order,challenge -A || true
  kubectl get acmednsaccounts -A -o yaml || true
  kubectl -n "$NAMESPACE" logs -l app.kubernetes.io/name=kube-acme-dns --tail=100 --prefix || true
  kubectl -n cert-manager logs deploy/cert-manager --tail=100 || true
}

cleanup() {
  local rc=$?
  if [[ $rc != 0 ]]; then diagnose; fi
  if [[ ${KEEP_CLUSTER:-} == 1 ]]; then
    say "keeping cluster $CLUSTER (delete it with: kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}

say "creating kind cluster $CLUSTER"
kind_args=(--name "$CLUSTER" --wait 120s)
[[ -n ${KIND_NODE_IMAGE:-} ]] && kind_args+=(--image "$KIND_NODE_IMAGE")
kind create cluster "${kind_args[@]}"
trap cleanup EXIT

say "building images: ours from the Dockerfile, Pebble and the resolver"
docker build -t "$IMAGE" "$REPO"
docker build -t kad-e2e/pebble:latest "$HERE/images/pebble"
docker build -t kad-e2e/resolver:latest "$HERE/images/resolver"
for image in "$IMAGE" kad-e2e/pebble:latest kad-e2e/resolver:latest; do
  kind load docker-image --name "$CLUSTER" "$image"
done

say "installing cert-manager $CERT_MANAGER_VERSION"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
kubectl -n cert-manager rollout status deploy --timeout="$TIMEOUT"

say "installing kube-acme-dns from charts/kube-acme-dns"
helm install "$RELEASE" "$REPO/charts/kube-acme-dns" --namespace "$NAMESPACE" --create-namespace \
  --set zone=auth.example.test \
  --set image.repository="${IMAGE%%:*}" --set-string image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set dns.service.type=ClusterIP \
  --wait --timeout "$TIMEOUT"
DNS_IP=$(kubectl -n "$NAMESPACE" get service "$RELEASE-kube-acme-dns-dns" -o jsonpath='{.spec.clusterIP}')
[[ -n $DNS_IP ]] || die "no ClusterIP on the DNS Service"

say "starting the resolver (the user's zone, delegating auth.example.test to $DNS_IP)"
render resolver.yaml "DNS_IP=$DNS_IP" | kubectl apply -f -
kubectl -n kad-e2e rollout status deploy/resolver --timeout="$TIMEOUT"
RESOLVER_IP=$(kubectl -n kad-e2e get service resolver -o jsonpath='{.spec.clusterIP}')

# The zone's name server address, and the resolver for the controller's CNAME checks.
helm upgrade "$RELEASE" "$REPO/charts/kube-acme-dns" --namespace "$NAMESPACE" --reuse-values \
  --set "dns.nameserverAddresses={$DNS_IP}" --set "controller.delegationResolver=$RESOLVER_IP:53" \
  --wait --timeout "$TIMEOUT"

say "starting Pebble, validating through $RESOLVER_IP"
render pebble.yaml "RESOLVER_IP=$RESOLVER_IP" | kubectl apply -f -
kubectl -n cert-manager rollout status deploy/pebble --timeout="$TIMEOUT"
# cert-manager's own propagation check goes to the same resolver.
kubectl -n cert-manager patch deploy cert-manager --type=json -p "[
  {\"op\": \"add\", \"path\": \"/spec/template/spec/containers/0/args/-\", \"value\": \"--dns01-recursive-nameservers=$RESOLVER_IP:53\"},
  {\"op\": \"add\", \"path\": \"/spec/template/spec/containers/0/args/-\", \"value\": \"--dns01-recursive-nameservers-only\"}
]"
kubectl -n cert-manager rollout status deploy/cert-manager --timeout="$TIMEOUT"

say "issuing a certificate for example.test and *.example.test"
PEBBLE_CA=$(docker run --rm --entrypoint cat kad-e2e/pebble:latest /pebble/test/certs/pebble.minica.pem | base64 | tr -d '\n')
render issuance.yaml "PEBBLE_CA=$PEBBLE_CA" | kubectl apply -f -
kubectl wait --for=condition=Ready certificate/example-test --timeout="$TIMEOUT"
kubectl get secret example-test-tls -o jsonpath='{.data.tls\.crt}' | base64 -d |
  openssl x509 -noout -ext subjectAltName
say "the Certificate is Ready"
