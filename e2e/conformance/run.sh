#!/usr/bin/env bash
# Runs cert-manager's DNS01 conformance suite (strict mode) against kube-acme-dns: the suite's
# Present and CleanUp go to our solver through the kube-apiserver aggregation layer, and its
# DNS checks go to our responder.
#
#   KAD_KUBECONFIG=... KAD_ZONE=auth.example.test. KAD_FQDN=<label>.auth.example.test. \
#   KAD_DNS=127.0.0.1:5353 [KAD_RESOURCE_NAMESPACE=ns] e2e/conformance/run.sh [TEST FLAGS...]
#
#   KAD_KUBECONFIG          kubeconfig of the API server that serves acme.acmedns.io/v1alpha1
#   KAD_ZONE                the zone our server is authoritative for (trailing dot)
#   KAD_FQDN                an account's FQDN under KAD_ZONE (trailing dot)
#   KAD_DNS                 host:port of our DNS responder
#   KAD_RESOURCE_NAMESPACE  optional: resourceNamespace sent with each request (the account's
#                           namespace); without it the suite's own namespace names are sent
#   KAD_POLL_INTERVAL, KAD_PROPAGATION_LIMIT  optional Go durations (default 250ms, 60s)
#
# The suite starts its own etcd and kube-apiserver (controller-runtime envtest); they come from
# e2e/tools.sh's cache. Extra arguments go to the test binary (e.g. -test.timeout=20m).
# The exit code is the test binary's.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E=$(dirname "$HERE")

say() { printf '[conformance] %s\n' "$*" >&2; }

missing=()
for v in KAD_KUBECONFIG KAD_ZONE KAD_FQDN KAD_DNS; do
  [[ -n ${!v:-} ]] || missing+=("$v")
done
if ((${#missing[@]})); then
  say "not set: ${missing[*]}"
  exit 2
fi
[[ -r $KAD_KUBECONFIG ]] || { say "KAD_KUBECONFIG=$KAD_KUBECONFIG is not readable"; exit 2; }
for v in KAD_ZONE KAD_FQDN; do
  [[ ${!v} == *. ]] || { say "$v=${!v} must end with a dot"; exit 2; }
done

"$E2E/tools.sh" etcd kube-apiserver kubectl
"$HERE/build.sh" build
bin=$("$HERE/build.sh" path)

# envtest wants files named exactly etcd, kube-apiserver and kubectl.
assets=$(mktemp -d "${TMPDIR:-/tmp}/kad-conformance-assets.XXXXXX")
trap 'rm -rf "$assets"' EXIT
for tool in etcd kube-apiserver kubectl; do
  ln -s "$("$E2E/tools.sh" path "$tool")" "$assets/$tool"
done
export KUBEBUILDER_ASSETS=$assets
# cert-manager's test/apiserver panics at init unless these are set (or the tools are on PATH).
export TEST_ASSET_ETCD=$assets/etcd
export TEST_ASSET_KUBE_APISERVER=$assets/kube-apiserver
export TEST_ASSET_KUBECTL=$assets/kubectl
# envtest's default of 20 s is short for a first kube-apiserver start on a busy 2-core machine.
export KUBEBUILDER_CONTROLPLANE_START_TIMEOUT=${KUBEBUILDER_CONTROLPLANE_START_TIMEOUT:-120s}
export KAD_KUBECONFIG KAD_ZONE KAD_FQDN KAD_DNS

say "suite: $bin"
ns=${KAD_RESOURCE_NAMESPACE:-"(the suite's own)"}
server=$(awk '$1 == "server:" { print $2; exit }' "$KAD_KUBECONFIG")
say "API server $server, zone $KAD_ZONE, fqdn $KAD_FQDN, dns $KAD_DNS, namespace $ns"
rc=0
"$bin" -test.v -test.run '^TestConformance$' -test.timeout=15m "$@" || rc=$?
say "exit code $rc"
exit "$rc"
