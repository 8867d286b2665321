#!/usr/bin/env bash
# Proves the aggregation layer of the local control plane works end to end: the real
# kube-apiserver proxies /apis/probe.acmedns.io/v1alpha1 to a process on loopback
# (e2e/aggregation_probe.py) through an APIService backed by an ExternalName Service,
# presenting the front-proxy client cert and X-Remote-User of the caller.
#
# Needs the cluster up (e2e/cluster.sh up). Prints "aggregation: passed" on success.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The cluster's kubeconfig and kubectl (eval of a failed $(...) would silently do nothing).
cluster_env=$("$E2E/cluster.sh" env) || { echo "[aggregation] FAILED: the cluster is not up; run e2e/cluster.sh up" >&2; exit 1; }
eval "$cluster_env"
STATE=$(dirname "$KUBECONFIG")

NAME=aggregation-probe
NAMESPACE=default
APISERVICE=v1alpha1.probe.acmedns.io
WAIT=${KAD_AGGREGATION_TIMEOUT:-60}

say() { printf '[aggregation] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kad-aggregation.XXXXXX")
PROBE_PID=""

fail() {
  say "FAILED: $*"
  [[ -n $PROBE_PID ]] || exit 1 # nothing started yet, so nothing to show
  say "--- APIService status"
  kubectl get apiservice "$APISERVICE" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 2>/dev/null || true
  say "--- requests the probe received"
  cat "$WORK/requests.jsonl" >&2 2>/dev/null || true
  say "--- probe log (tail)"
  tail -n 20 "$WORK/probe.log" >&2 2>/dev/null || true
  exit 1
}

# Leave the cluster as we found it, whatever happened.
cleanup() {
  local rc=$?
  kubectl delete apiservice "$APISERVICE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl -n "$NAMESPACE" delete service "$NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [[ -n $PROBE_PID ]] && kill -0 "$PROBE_PID" 2>/dev/null; then
    kill "$PROBE_PID" 2>/dev/null || true
    wait "$PROBE_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

kubectl get --raw /readyz >/dev/null 2>&1 || fail "the cluster is not reachable; run e2e/cluster.sh up"

# The aggregator checks the serving cert against caBundle for <service>.<namespace>.svc.
say "generating the probe's CA and serving certificate"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -keyout "$WORK/ca.key" -out "$WORK/ca.crt" -subj "/CN=aggregation-probe-ca" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$WORK/tls.key" -out "$WORK/tls.csr" -subj "/CN=$NAME.$NAMESPACE.svc" 2>/dev/null
printf '%s\n' "basicConstraints=critical,CA:FALSE" "extendedKeyUsage=serverAuth" \
  "subjectAltName=DNS:$NAME.$NAMESPACE.svc" >"$WORK/tls.ext"
openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 1 -extfile "$WORK/tls.ext" -out "$WORK/tls.crt" 2>/dev/null

say "starting the probe server"
python3 "$E2E/aggregation_probe.py" --cert "$WORK/tls.crt" --key "$WORK/tls.key" \
  --client-ca "$STATE/pki/front-proxy-ca.crt" \
  --port-file "$WORK/port" --record "$WORK/requests.jsonl" >"$WORK/probe.log" 2>&1 &
PROBE_PID=$!
for _ in $(seq 1 50); do
  [[ -s $WORK/port ]] && break
  kill -0 "$PROBE_PID" 2>/dev/null || fail "the probe server exited"
  sleep 0.1
done
[[ -s $WORK/port ]] || fail "the probe server did not start listening"
PORT=$(cat "$WORK/port")
say "probe listening on 127.0.0.1:$PORT"

# ExternalName=localhost: the aggregator (with --enable-aggregator-routing=false) dials
# externalName:spec.service.port, which is our loopback process.
say "creating Service $NAMESPACE/$NAME and APIService $APISERVICE"
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: $NAME
  namespace: $NAMESPACE
spec:
  type: ExternalName
  externalName: localhost
  ports:
  - name: https
    port: $PORT
    protocol: TCP
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: $APISERVICE
spec:
  group: probe.acmedns.io
  version: v1alpha1
  service:
    name: $NAME
    namespace: $NAMESPACE
    port: $PORT
  caBundle: $(base64 -w0 <"$WORK/ca.crt")
  groupPriorityMinimum: 1000
  versionPriority: 15
EOF

say "waiting for $APISERVICE to become Available (up to $WAIT s)"
kubectl wait --for=condition=Available "apiservice/$APISERVICE" --timeout="${WAIT}s" >/dev/null ||
  fail "APIService $APISERVICE did not become Available"

say "reading /apis/probe.acmedns.io/v1alpha1 through the aggregator"
body=$(kubectl get --raw /apis/probe.acmedns.io/v1alpha1) || fail "kubectl get --raw failed"
python3 - "$body" <<'EOF' || fail "unexpected discovery document: $body"
import json, sys
doc = json.loads(sys.argv[1])
assert doc.get("kind") == "APIResourceList", doc.get("kind")
assert doc.get("groupVersion") == "probe.acmedns.io/v1alpha1", doc.get("groupVersion")
names = [(r["name"], r["verbs"]) for r in doc.get("resources", [])]
assert names == [("probes", ["create"])], names
EOF

# The request kubectl made must have reached the probe as user "admin", over TLS with
# the front-proxy client cert (the probe requires it; the CN proves which cert it was).
python3 - "$WORK/requests.jsonl" <<'EOF' || fail "the probe never saw X-Remote-User=admin from front-proxy-client"
import json, sys
seen = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
ok = [r for r in seen
      if r["user"] == "admin"
      and r["path"].split("?")[0] == "/apis/probe.acmedns.io/v1alpha1"
      and r["client_cn"] == "front-proxy-client"]
sys.exit(0 if ok else 1)
EOF

echo "aggregation: passed"
