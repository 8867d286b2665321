#!/usr/bin/env bash
# A real Kubernetes node beside the loopback control plane of e2e/cluster.sh: containerd +
# runc, kubelet and kube-proxy, with kube-scheduler and kube-controller-manager, all the
# same Kubernetes version as kube-apiserver (built by e2e/tools.sh). `cluster.sh up` and
# `down` call this; run it by hand only to restart the node.
#
#   e2e/node.sh up             start the node (idempotent; the control plane must be up)
#   e2e/node.sh down [quiet]   stop everything `up` started and remove its traces
#   e2e/node.sh load ARCHIVE   import an OCI image archive into the node's containerd
#   e2e/node.sh netns          print the path of the node's network namespace
#   e2e/node.sh status         say whether the node is up (exit 0 if up, 1 if not)
#
# Network design. Every address that is not loopback lives in one network namespace
# this script creates (named after the state dir, so two clones never share one), with
# no route out: the node address (10.200.0.1 on an otherwise empty bridge node0), the
# pod bridge (cni0, 10.244.0.0/24, no masquerading), the Service range (10.0.0.0/24),
# kube-proxy's iptables rules and the LoadBalancer addresses tests assign (10.200.0.0/24).
# A mistake there fails fast instead of reaching the machine's network, and deleting the
# namespace removes all of it.
#
#   in the namespace: containerd (so CNI builds the pod network there), kubelet (its
#   probes reach pod IPs; it serves on the node address), kube-proxy (its rules), pods.
#   on loopback:      etcd, kube-apiserver, kube-scheduler, kube-controller-manager, the
#                     tests; they only ever talk to the API server.
#
# Both directions cross through one process, e2e/node-bridge.py, which lives on loopback
# and opens sockets inside the namespace with setns(2) on a thread of its own:
#
#   node -> API server: it listens on 10.200.0.1:6443 in the namespace and forwards to
#     kube-apiserver on 127.0.0.1. kubelet and kube-proxy use that address; the
#     `kubernetes` Service (10.0.0.1:443) gets an EndpointSlice pointing there, so pods
#     reach the API server the usual way (its certificate names both addresses).
#   API server -> cluster: kube-apiserver's egress selector (the Konnectivity mechanism)
#     sends every connection it makes to the cluster -- the aggregator to an APIService's
#     Service, `kubectl logs/exec` to kubelet, webhooks -- as HTTP CONNECT over a UNIX
#     socket to the bridge, which dials loopback targets (the ExternalName `localhost`
#     Services of tests that run our binary as a process) directly and everything else
#     from inside the namespace, where kube-proxy routes Service IPs to pods. The
#     aggregator keeps resolving APIServices to Service IPs (no aggregator routing).
#
# Processes join the namespace with `nsenter --net` only: `ip netns exec` would also give
# each one a mount namespace of its own, and kubelet's volume mounts must be seen by
# containerd. Pods' cgroups live under /<namespace name> in each hierarchy and their
# network namespaces under containerd's state dir, so `down` removes exactly ours.
#
# No registry: the pause image is built here (a static C binary, `buildah from scratch`)
# and pods use imagePullPolicy: Never with images loaded by `load` (e2e/image.sh).
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$E2E")
STATE=${KAD_CLUSTER_DIR:-$REPO/e2e/.state}
mkdir -p "$(dirname "$STATE")"
STATE=$(cd "$(dirname "$STATE")" && pwd)/$(basename "$STATE")
PKI=$STATE/pki
NODE=$STATE/node

say() { printf '[node] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=e2e/lib.sh
source "$E2E/lib.sh"

READY_TIMEOUT=${KAD_NODE_READY_TIMEOUT:-120}
# Derived from the state dir: the namespace, and the cgroup every pod lives under.
NODE_ID=kad-$(printf '%s' "$STATE" | sha256sum | cut -c1-10)
NETNS=$NODE_ID
NETNS_PATH=/run/netns/$NETNS
CGROUP_ROOT=/$NODE_ID
SOCK=$NODE/containerd.sock
IN_NODE=(nsenter "--net=$NETNS_PATH" --)
PAUSE_REF=kad.local/pause:3

# ---------------------------------------------------------------------------------------
# The pause image: a few lines of C that sleep, reap children, and exit on TERM or INT.

PAUSE_C='#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {}
}

int main(void) {
  struct sigaction term = {.sa_handler = on_term};
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  sigaction(SIGTERM, &term, 0);
  sigaction(SIGINT, &term, 0);
  sigaction(SIGCHLD, &child, 0);
  for (;;) pause();
}
'

# Prints the path of the pause image's archive, building it on first use (cached by source).
pause_archive() {
  local hash dir archive
  hash=$(printf '%s' "$PAUSE_C$PAUSE_REF" | sha256sum | cut -c1-12)
  dir=$KAD_CACHE/images
  archive=$dir/pause-$hash.tar
  if [[ ! -f $archive ]]; then
    say "building the pause image (first time only)"
    mkdir -p "$dir"
    local work
    work=$(mktemp -d)
    printf '%s' "$PAUSE_C" >"$work/pause.c"
    mkdir "$work/root"
    gcc -Os -static -o "$work/root/pause" "$work/pause.c"
    strip "$work/root/pause"
    build_oci_archive "$PAUSE_REF" "$archive" "$work/root" \
      --entrypoint '["/pause"]' --user 65535:65535
    rm -rf "$work"
  fi
  echo "$archive"
}

# ---------------------------------------------------------------------------------------
# Helpers.

ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }
kubectl_() { "$("$E2E/tools.sh" path kubectl)" --kubeconfig="$STATE/kubeconfig" "$@"; }
api_port() { cat "$STATE/apiserver.port"; }

# write_kubeconfig NAME SERVER: a kubeconfig with the client cert PKI/NAME.{crt,key}.
write_kubeconfig() {
  local name=$1 server=$2
  cat >"$NODE/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: local
  context: {cluster: local, user: $name}
current-context: local
EOF
}

node_ready() {
  [[ $(kubectl_ get node "$KAD_NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

NODE_PROCS=(node-bridge containerd kube-controller-manager kube-scheduler kube-proxy kubelet)

is_up() {
  local p
  for p in "${NODE_PROCS[@]}"; do live_pid "$p" >/dev/null || return 1; done
  node_ready
}

# The cgroup hierarchies mounted here (cgroup v1 controllers, and cgroup2 if mounted).
cgroup_mounts() { awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts; }

make_cgroup_root() {
  local m
  for m in $(cgroup_mounts); do
    mkdir -p "$m$CGROUP_ROOT"
    # A new cpuset cgroup starts with no CPUs and no memory nodes: inherit the parent's.
    if [[ -f $m$CGROUP_ROOT/cpuset.cpus ]]; then
      cat "$m/cpuset.cpus" >"$m$CGROUP_ROOT/cpuset.cpus"
      cat "$m/cpuset.mems" >"$m$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

# Pids of every process in the node's cgroups (the pods' containers and pause processes).
pod_pids() {
  local m
  for m in $(cgroup_mounts); do
    [[ -d $m$CGROUP_ROOT ]] || continue
    find "$m$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

# Pids of containerd shims serving our containerd (their argv has `-address SOCK`).
shim_pids() {
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    tr '\0' '\n' 2>/dev/null <"$f" | grep -qxF -- "$SOCK" || continue
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */containerd-shim* ]] && echo "$pid"
  done
}

# The socket files under /run/containerd/s that our shims listen on: the inodes of their
# file descriptors, looked up in the socket table of their network namespace.
shim_sockets() {
  local pid
  for pid in $(shim_pids); do
    find "/proc/$pid/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n' |
      awk 'NR == FNR { own[$1]; next } ($7 in own) && $8 ~ /^\/run\/containerd\/s\// { print $8 }' \
        - "/proc/$pid/net/unix"
  done | sort -u
}

# kill_all WHAT FUNCTION: SIGKILL whatever FUNCTION lists until it lists nothing (10 s).
kill_all() {
  local what=$1 list=$2 pids
  for _ in $(seq 1 50); do
    pids=$($list)
    [[ -z $pids ]] && return 0
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
  done
  say "warning: $what still running: $($list | tr '\n' ' ')"
}

# Every mount point under DIR, deepest first (mountinfo escapes spaces as \040).
mounts_under() {
  awk -v dir="$1/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo |
    awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2- | sed 's/\\040/ /g'
}

# ---------------------------------------------------------------------------------------
# Subcommands.

abort_up() {
  local rc=$?
  ((rc == 0)) && return 0
  say "node did not come up; logs in $STATE/{containerd,kubelet,kube-proxy,kube-scheduler,kube-controller-manager,node-bridge}.log"
  exit "$rc"
}

cmd_up() {
  [[ -f $STATE/kubeconfig && -f $STATE/apiserver.port ]] ||
    die "the control plane is not up; run e2e/cluster.sh up (it starts the node too)"
  if is_up; then
    say "already up (node $KAD_NODE_NAME, network namespace $NETNS)"
    return 0
  fi
  local t0=$SECONDS
  local c
  for c in containerd runc nsenter ip iptables buildah skopeo gcc; do
    command -v "$c" >/dev/null || die "$c is missing; run make deps (or e2e/deps.sh)"
  done
  [[ -x /usr/lib/cni/bridge ]] || die "the CNI plugins are missing; run make deps (or e2e/deps.sh)"
  "$E2E/tools.sh" node kubectl
  local kubelet proxy scheduler manager
  kubelet=$("$E2E/tools.sh" path kubelet)
  proxy=$("$E2E/tools.sh" path kube-proxy)
  scheduler=$("$E2E/tools.sh" path kube-scheduler)
  manager=$("$E2E/tools.sh" path kube-controller-manager)
  local pause
  pause=$(pause_archive)

  # Whatever a previous, broken run left.
  cmd_down quiet
  trap abort_up EXIT
  mkdir -p "$NODE"/{cni,containerd,kubelet,pod-logs,cni-ipam,runc}

  say "network namespace $NETNS: node address $KAD_NODE_IP, pods $KAD_POD_CIDR, Services $KAD_SERVICE_CIDR"
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" link add node0 type bridge
  ip -n "$NETNS" addr add "$KAD_NODE_IP/${KAD_NODE_CIDR#*/}" dev node0
  ip -n "$NETNS" link set node0 up
  # Connections the node itself opens to Service IPs (the bridge for the aggregator,
  # tests) need a route before kube-proxy's DNAT rewrites them; the pods' bridge and the
  # LoadBalancer addresses are on-link already. Still no route out.
  ip -n "$NETNS" route add "$KAD_SERVICE_CIDR" dev node0
  # Both are per namespace: forwarding between the pod bridge and the node, and pod-to-
  # Service-to-pod on one bridge seen by iptables (kube-proxy's DNAT).
  "${IN_NODE[@]}" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward
    [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
    true'

  # The interpreter itself, not a wrapper (pyenv's shims are shell scripts): start_proc
  # records the executable it expects to find running.
  local python
  python=$(python3 -c 'import sys; print(sys.executable)')
  start_proc node-bridge "$python" "$E2E/node-bridge.py" \
    --netns "$NETNS_PATH" \
    --egress-socket "$STATE/node-egress.sock" \
    --api-listen "$KAD_NODE_IP:$KAD_NODE_API_PORT" \
    --api-target "127.0.0.1:$(api_port)"
  for _ in $(seq 1 100); do
    [[ -S $STATE/node-egress.sock ]] && break
    live_pid node-bridge >/dev/null || { tail -n 20 "$STATE/node-bridge.log" >&2; die "node-bridge exited"; }
    sleep 0.1
  done
  [[ -S $STATE/node-egress.sock ]] || die "node-bridge did not open its socket in 10 s"

  make_cgroup_root
  # Pods inherit this resolv.conf: a name lookup in a pod goes to its own loopback.
  echo "nameserver 127.0.0.1" >"$NODE/resolv.conf"
  cat >"$NODE/cni/10-kad.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kad",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$KAD_POD_CIDR" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$NODE/cni-ipam"
      }
    }
  ]
}
EOF
  # restrict_oom_score_adj: the sandbox asks for oom_score_adj -998, which needs
  # CAP_SYS_RESOURCE; without it runc fails every sandbox here. runc's state root and the
  # pods' network namespaces go under our state dir, not /run.
  cat >"$NODE/containerd.toml" <<EOF
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni"
EOF
  say "starting containerd"
  start_proc containerd "${IN_NODE[@]}" "$(command -v containerd)" --config "$NODE/containerd.toml"
  for _ in $(seq 1 100); do
    ctr_ version >/dev/null 2>&1 && break
    live_pid containerd >/dev/null || { tail -n 20 "$STATE/containerd.log" >&2; die "containerd exited"; }
    sleep 0.1
  done
  ctr_ images import "$pause" >/dev/null

  write_kubeconfig kubelet "https://$KAD_NODE_IP:$KAD_NODE_API_PORT"
  write_kubeconfig kube-proxy "https://$KAD_NODE_IP:$KAD_NODE_API_PORT"
  write_kubeconfig kube-scheduler "https://127.0.0.1:$(api_port)"
  write_kubeconfig kube-controller-manager "https://127.0.0.1:$(api_port)"

  # The API server's endpoint reconciler is off (it refuses a loopback advertise
  # address): point the `kubernetes` Service at the bridge's listener on the node.
  kubectl_ apply --server-side --force-conflicts -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: kube-acme-dns-e2e
addressType: IPv4
endpoints:
- addresses: ["$KAD_NODE_IP"]
  conditions: {ready: true}
ports:
- name: https
  port: $KAD_NODE_API_PORT
  protocol: TCP
EOF

  local manager_port scheduler_port
  manager_port=$(free_port)
  say "starting kube-controller-manager"
  start_proc kube-controller-manager "$manager" \
    --kubeconfig="$NODE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$NODE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$NODE/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$manager_port" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$KAD_SERVICE_CIDR" \
    --allocate-node-cidrs=false
  scheduler_port=$(free_port)
  say "starting kube-scheduler"
  start_proc kube-scheduler "$scheduler" \
    --kubeconfig="$NODE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$NODE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$NODE/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$scheduler_port" \
    --leader-elect=false

  # conntrack: leave the kernel's (machine-wide) settings alone.
  cat >"$NODE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $NODE/kube-proxy.kubeconfig
hostnameOverride: $KAD_NODE_NAME
mode: iptables
clusterCIDR: $KAD_POD_CIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  say "starting kube-proxy"
  start_proc kube-proxy "${IN_NODE[@]}" "$proxy" --config="$NODE/kube-proxy.yaml"

  # cgroup v1 and containerd 1.6 (no RuntimeConfig call): cgroupfs, and v1 allowed.
  # Eviction thresholds near zero: a busy build machine must not evict test pods.
  cat >"$NODE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
containerRuntimeEndpoint: unix://$SOCK
resolvConf: $NODE/resolv.conf
podLogsDir: $NODE/pod-logs
address: $KAD_NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
failSwapOn: false
staticPodPath: ""
clusterDomain: cluster.local
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  say "starting kubelet"
  start_proc kubelet "${IN_NODE[@]}" "$kubelet" \
    --config="$NODE/kubelet.yaml" \
    --kubeconfig="$NODE/kubelet.kubeconfig" \
    --root-dir="$NODE/kubelet" \
    --hostname-override="$KAD_NODE_NAME" \
    --node-ip="$KAD_NODE_IP"

  say "waiting for node $KAD_NODE_NAME to be Ready (up to ${READY_TIMEOUT} s)"
  local deadline=$((SECONDS + READY_TIMEOUT)) p
  until node_ready && kubectl_ -n default get serviceaccount default >/dev/null 2>&1; do
    for p in "${NODE_PROCS[@]}"; do
      live_pid "$p" >/dev/null && continue
      say "--- tail of $p.log"; tail -n 30 "$STATE/$p.log" >&2 || true
      die "$p exited"
    done
    if ((SECONDS >= deadline)); then
      say "--- tail of kubelet.log"; tail -n 30 "$STATE/kubelet.log" >&2 || true
      die "node not Ready after ${READY_TIMEOUT} s"
    fi
    sleep 0.5
  done
  trap - EXIT
  say "node up in $((SECONDS - t0)) s"
}

cmd_down() {
  local quiet=${1:-}
  if [[ ! -d $NODE && ! -e $NETNS_PATH ]]; then
    [[ -n $quiet ]] || say "node already down"
    return 0
  fi
  stop_proc kubelet
  stop_proc kube-proxy
  stop_proc kube-scheduler
  stop_proc kube-controller-manager
  # The pods' processes, then containerd and the shims it leaves behind, and the shims'
  # socket files (in /run/containerd/s whatever containerd's state dir).
  local sockets s
  sockets=$(shim_sockets)
  kill_all "pod processes" pod_pids
  stop_proc containerd
  kill_all "containerd shims" shim_pids
  for s in $sockets; do
    [[ -S $s ]] && rm -f "$s"
  done
  stop_proc node-bridge
  rm -f "$STATE/node-egress.sock" "$STATE/node-egress.sock.tmp"
  local m
  while IFS= read -r m; do
    [[ -n $m ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m" || say "warning: cannot unmount $m"
  done < <(mounts_under "$NODE")
  if [[ -e $NETNS_PATH ]]; then
    ip netns delete "$NETNS" || say "warning: cannot delete network namespace $NETNS"
  fi
  local c
  for m in $(cgroup_mounts); do
    [[ -d $m$CGROUP_ROOT ]] || continue
    while IFS= read -r c; do
      rmdir "$c" 2>/dev/null || say "warning: cannot remove cgroup $c"
    done < <(find "$m$CGROUP_ROOT" -depth -type d)
  done
  # kubelet links each container's log from this fixed directory.
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$NODE/*" -delete
  fi
  rm -rf "$NODE"
  [[ -n $quiet ]] || say "node down"
}

cmd_load() {
  [[ -f ${1:-} ]] || die "usage: $0 load ARCHIVE (an OCI image archive)"
  live_pid containerd >/dev/null || die "the node is not up; run e2e/cluster.sh up"
  ctr_ images import "$1" >/dev/null
}

cmd_status() {
  if is_up; then
    echo "up: node $KAD_NODE_NAME Ready, network namespace $NETNS, containerd $SOCK"
  else
    echo "down"
    return 1
  fi
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down "${2:-}" ;;
  load) cmd_load "${2:-}" ;;
  netns) echo "$NETNS_PATH" ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|load ARCHIVE|netns|status" >&2; exit 2 ;;
esac
