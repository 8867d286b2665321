#!/usr/bin/env bash
# A real control plane (etcd + kube-apiserver) on loopback for the tests, no Docker, and a
# real node beside it (e2e/node.sh: containerd, kubelet, kube-proxy, kube-scheduler,
# kube-controller-manager, the node network in a network namespace of its own). The API
# server is set up the way controller-runtime's envtest sets it up, plus RBAC and Node
# authorization, ServiceAccount token signing, the aggregation layer, and an egress
# selector that sends its traffic to the cluster (aggregated APIs, kubelets) through the
# node's bridge process.
#
#   e2e/cluster.sh up       start it (idempotent); builds the binaries on first use
#   e2e/cluster.sh down     stop exactly what `up` started and remove the state dir
#   e2e/cluster.sh env      print shell exports: eval "$(e2e/cluster.sh env)"
#   e2e/cluster.sh status   say whether it is up (exit 0 if up, 1 if not)
#   e2e/cluster.sh stop-apiserver / start-apiserver
#                           stop the API server alone, and start it again (fault tests)
#
# State (certs, logs, etcd data, kubeconfig, pids) lives in ${KAD_CLUSTER_DIR:-e2e/.state}.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$E2E")
STATE=${KAD_CLUSTER_DIR:-$REPO/e2e/.state}
mkdir -p "$(dirname "$STATE")"
STATE=$(cd "$(dirname "$STATE")" && pwd)/$(basename "$STATE") # absolute, for the kubeconfig
PKI=$STATE/pki
# Marks a directory as ours, so `down` never removes a directory it did not create.
MARKER=$STATE/.kube-acme-dns-cluster

READY_TIMEOUT=${KAD_READY_TIMEOUT:-120}

say() { printf '[cluster] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=e2e/lib.sh
source "$E2E/lib.sh"

# ---------------------------------------------------------------------------------------
# Helpers.

api_url() { echo "https://127.0.0.1:$(cat "$STATE/apiserver.port")"; }

# /readyz with the admin client cert; prints nothing, succeeds when the server is ready.
readyz() {
  curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$(api_url)/readyz" >/dev/null 2>&1
}

is_up() {
  [[ -f $STATE/apiserver.port ]] && live_pid etcd >/dev/null && live_pid kube-apiserver >/dev/null && readyz
}

# Several distinct free ports on 127.0.0.1: bind them all to port 0 at once, so the kernel
# hands out different ones, then release them for the servers to take.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

env_lines() {
  printf 'export KUBECONFIG=%q;\n' "$STATE/kubeconfig"
  # $PATH stays literal so it expands in the shell that evaluates this.
  # shellcheck disable=SC2016
  printf 'export PATH=%q:"$PATH";\n' "$STATE/bin"
}

# ---------------------------------------------------------------------------------------
# Certificates (EC P-256 keys: quick to make, accepted everywhere here).

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# new_ca NAME CN
new_ca() {
  new_key "$PKI/$1.key"
  openssl req -x509 -new -key "$PKI/$1.key" -out "$PKI/$1.crt" -days 365 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}

# new_cert CA NAME SUBJECT EXTENSIONS
new_cert() {
  local ca=$1 name=$2 subj=$3 ext=$4
  new_key "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -CAcreateserial -days 365 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

make_pki() {
  mkdir -p "$PKI"
  new_ca ca kube-acme-dns-e2e-ca
  new_cert ca apiserver "/CN=kube-apiserver" "$(
    printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,IP:::1,IP:10.0.0.1,IP:$KAD_NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  )"
  # O=system:masters: bound to cluster-admin by the bootstrap RBAC policy.
  new_cert ca admin "/O=system:masters/CN=admin" "$(
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
  )"
  # The aggregator authenticates to extension API servers with this cert; they trust it
  # through the front-proxy CA published in kube-system/extension-apiserver-authentication.
  new_ca front-proxy-ca kube-acme-dns-e2e-front-proxy-ca
  new_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" "$(
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
  )"
  # The node's parts, each as the user the bootstrap RBAC policy (or the Node
  # authorizer) expects, and the API server's client cert for kubelets (logs, exec).
  local client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  new_cert ca kubelet "/O=system:nodes/CN=system:node:$KAD_NODE_NAME" "$client"
  new_cert ca kube-proxy "/CN=system:kube-proxy" "$client"
  new_cert ca kube-scheduler "/CN=system:kube-scheduler" "$client"
  new_cert ca kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  new_cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  # ServiceAccount token signing pair (RSA: the conventional choice for RS256 tokens).
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
}

write_kubeconfig() {
  local b64='base64 -w0'
  cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-acme-dns-e2e
  cluster:
    server: $(api_url)
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $($b64 <"$PKI/admin.crt")
    client-key-data: $($b64 <"$PKI/admin.key")
contexts:
- name: kube-acme-dns-e2e
  context:
    cluster: kube-acme-dns-e2e
    user: admin
    namespace: default
current-context: kube-acme-dns-e2e
EOF
  chmod 600 "$STATE/kubeconfig"
}

# ---------------------------------------------------------------------------------------
# Subcommands.

abort_up() {
  local rc=$?
  ((rc == 0)) && return 0
  "$E2E/node.sh" down || true
  stop_proc kube-apiserver
  stop_proc etcd
  say "up failed; logs kept in $STATE (remove with '$0 down')"
  exit "$rc"
}

cmd_up() {
  if is_up; then
    say "already up at $(api_url) (state: $STATE)"
    "$E2E/node.sh" up
    return 0
  fi
  local t0=$SECONDS

  say "building/locating tools"
  "$E2E/tools.sh" etcd kube-apiserver kubectl
  local etcd apiserver kubectl helm
  etcd=$("$E2E/tools.sh" path etcd)
  apiserver=$("$E2E/tools.sh" path kube-apiserver)
  kubectl=$("$E2E/tools.sh" path kubectl)
  helm=$("$E2E/tools.sh" path helm)

  # Anything left from a previous run that is not healthy: stop it and start clean.
  if [[ -e $STATE ]]; then
    [[ -f $MARKER ]] || die "$STATE exists but was not made by this script; refusing to touch it"
    say "clearing stale state in $STATE"
    "$E2E/node.sh" down
    stop_proc kube-apiserver
    stop_proc etcd
    rm -rf "$STATE"
  fi
  mkdir -p "$STATE/bin"
  touch "$MARKER"
  # A failed or interrupted `up` must not leave servers running behind the caller's back;
  # the logs stay for a look, and `down` removes them.
  trap abort_up EXIT
  trap 'exit 130' INT TERM

  ln -s "$etcd" "$STATE/bin/etcd"
  ln -s "$apiserver" "$STATE/bin/kube-apiserver"
  ln -s "$kubectl" "$STATE/bin/kubectl"
  [[ -x $helm ]] && ln -s "$helm" "$STATE/bin/helm"

  say "generating certificates"
  make_pki

  local etcd_port peer_port api_port
  read -r etcd_port peer_port api_port < <(free_ports 3)
  echo "$api_port" >"$STATE/apiserver.port"
  echo "$etcd_port" >"$STATE/etcd.port"

  say "starting etcd on 127.0.0.1:$etcd_port"
  # Plain HTTP on loopback, no fsync: a throwaway store, as envtest runs it.
  start_proc etcd "$etcd" \
    --name=e2e \
    --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="e2e=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync=true

  # Everything the API server sends to the cluster (aggregated APIs, kubelets, webhooks)
  # goes through the node's bridge process on this UNIX socket (e2e/node.sh explains).
  cat >"$STATE/egress-selector.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $STATE/node-egress.sock
EOF

  say "starting kube-apiserver on 127.0.0.1:$api_port"
  # --endpoint-reconciler-type=none: the lease reconciler refuses a loopback advertise
  # address ("may not be in the loopback range") and exits; Kubernetes' own test server
  # turns it off the same way. e2e/node.sh gives the `kubernetes` Service its endpoint.
  # --kubelet-preferred-address-types=InternalIP: otherwise `kubectl logs` makes the API
  # server resolve the node's hostname through the machine's resolver.
  local apiserver_args=("$apiserver"
    --bind-address=127.0.0.1
    --advertise-address=127.0.0.1
    --endpoint-reconciler-type=none
    --secure-port="$api_port"
    --etcd-servers="http://127.0.0.1:$etcd_port"
    --cert-dir="$STATE/apiserver-certs"
    --tls-cert-file="$PKI/apiserver.crt"
    --tls-private-key-file="$PKI/apiserver.key"
    --client-ca-file="$PKI/ca.crt"
    "--authorization-mode=Node,RBAC"
    --service-cluster-ip-range="$KAD_SERVICE_CIDR"
    --allow-privileged=true
    --egress-selector-config-file="$STATE/egress-selector.yaml"
    --kubelet-preferred-address-types=InternalIP
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
    --service-account-issuer="https://127.0.0.1:$api_port"
    --service-account-key-file="$PKI/sa.pub"
    --service-account-signing-key-file="$PKI/sa.key"
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt"
    --requestheader-allowed-names=front-proxy-client
    --requestheader-username-headers=X-Remote-User
    --requestheader-group-headers=X-Remote-Group
    --requestheader-extra-headers-prefix=X-Remote-Extra-
    --proxy-client-cert-file="$PKI/front-proxy-client.crt"
    --proxy-client-key-file="$PKI/front-proxy-client.key"
    --enable-aggregator-routing=false
    --profiling=false)
  # Kept, so `start-apiserver` can start it again the same way.
  printf '%s\0' "${apiserver_args[@]}" >"$STATE/kube-apiserver.args"
  start_proc kube-apiserver "${apiserver_args[@]}"

  write_kubeconfig
  env_lines >"$STATE/env"

  say "waiting for /readyz (up to ${READY_TIMEOUT} s)"
  local deadline=$((SECONDS + READY_TIMEOUT)) last=$SECONDS
  until readyz; do
    local dead=""
    live_pid etcd >/dev/null || dead=etcd
    live_pid kube-apiserver >/dev/null || dead=kube-apiserver
    if [[ -n $dead || $SECONDS -ge $deadline ]]; then
      if [[ -n $dead ]]; then say "$dead exited"; else say "not ready after ${READY_TIMEOUT} s"; fi
      say "--- tail of etcd.log"; tail -n 15 "$STATE/etcd.log" >&2 || true
      say "--- tail of kube-apiserver.log"; tail -n 40 "$STATE/kube-apiserver.log" >&2 || true
      die "cluster did not come up"
    fi
    if ((SECONDS - last >= 5)); then
      say "  still waiting ($((SECONDS - t0)) s)"
      last=$SECONDS
    fi
    sleep 0.5
  done

  # /readyz can answer before the bootstrap controllers have created these; tests rely on them.
  local k=("$kubectl" --kubeconfig="$STATE/kubeconfig")
  say "waiting for namespace default and kube-system/extension-apiserver-authentication"
  until "${k[@]}" get namespace default >/dev/null 2>&1 &&
    "${k[@]}" -n kube-system get configmap extension-apiserver-authentication >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "bootstrap objects did not appear in time"
    sleep 0.5
  done

  # Prove TokenRequest (what tests use for ServiceAccount
  # credentials) works: mint a token and authenticate with it alone.
  local sa=cluster-sh-token-check token who
  "${k[@]}" -n kube-system create serviceaccount "$sa" >/dev/null
  token=$("${k[@]}" -n kube-system create token "$sa" --duration=10m)
  who=$("$kubectl" --kubeconfig=/dev/null --server="$(api_url)" \
    --certificate-authority="$PKI/ca.crt" --token="$token" \
    auth whoami -o jsonpath='{.status.userInfo.username}')
  "${k[@]}" -n kube-system delete serviceaccount "$sa" --wait=false >/dev/null
  [[ $who == "system:serviceaccount:kube-system:$sa" ]] ||
    die "ServiceAccount token authenticated as '$who'"

  say "control plane up in $((SECONDS - t0)) s at $(api_url)"
  "$E2E/node.sh" up

  trap - EXIT INT TERM
  say "up in $((SECONDS - t0)) s at $(api_url)"
  say "use it with: eval \"\$($0 env)\""
}

cmd_down() {
  if [[ ! -e $STATE ]]; then
    # The node's namespace, cgroups and shims are named after the state dir: remove them
    # even if the dir itself went away.
    "$E2E/node.sh" down quiet
    say "already down"
    return 0
  fi
  [[ -f $MARKER ]] || die "$STATE was not made by this script; refusing to touch it"
  # The node first: its pods, mounts and network namespace.
  "$E2E/node.sh" down
  # The API server next, so it does not log etcd connection errors while shutting down.
  stop_proc kube-apiserver
  stop_proc etcd
  rm -rf "$STATE"
  say "down"
}

# Fault tests: stop the API server alone (etcd and the node keep running), and start it
# again as `up` did, waiting until it is ready.
cmd_stop_apiserver() {
  [[ -f $MARKER ]] || die "not up; run '$0 up' first"
  stop_proc kube-apiserver
}

cmd_start_apiserver() {
  [[ -f $STATE/kube-apiserver.args ]] || die "not up; run '$0 up' first"
  local args=() deadline=$((SECONDS + READY_TIMEOUT))
  mapfile -d '' args <"$STATE/kube-apiserver.args"
  start_proc kube-apiserver "${args[@]}"
  until readyz; do
    live_pid kube-apiserver >/dev/null || die "kube-apiserver exited; see $STATE/kube-apiserver.log"
    ((SECONDS < deadline)) || die "kube-apiserver not ready after ${READY_TIMEOUT} s"
    sleep 0.5
  done
  say "kube-apiserver ready again at $(api_url)"
}

cmd_env() {
  [[ -f $STATE/kubeconfig ]] || die "not up; run '$0 up' first"
  env_lines
}

cmd_status() {
  if is_up; then
    echo "up: $(api_url) (etcd pid $(live_pid etcd), kube-apiserver pid $(live_pid kube-apiserver); state $STATE)"
  elif [[ -e $STATE ]]; then
    echo "down (stale state in $STATE; '$0 up' restarts, '$0 down' cleans up)"
    return 1
  else
    echo "down"
    return 1
  fi
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  stop-apiserver) cmd_stop_apiserver ;;
  start-apiserver) cmd_start_apiserver ;;
  *) echo "usage: $0 up|down|env|status|stop-apiserver|start-apiserver" >&2; exit 2 ;;
esac
