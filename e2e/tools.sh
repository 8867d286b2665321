#!/usr/bin/env bash
# Builds the real control-plane parts the tests run against, through the Go module
# proxy, and caches each binary by version so a second run (or a fresh clone on the
# same machine) reuses it.
#
#   e2e/tools.sh [etcd|kube-apiserver|kubectl|helm|lego|all]   prints nothing but progress
#   e2e/tools.sh kubelet kube-proxy kube-scheduler kube-controller-manager
#                                                               the node's parts (`node`: all four)
#   e2e/tools.sh path NAME                                      prints the cached binary path
set -euo pipefail

ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
LEGO_VERSION=${LEGO_VERSION:-v5.6.0}

say() { printf '[tools] %s\n' "$*" >&2; }
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN=$KAD_CACHE_BIN
SRC=$KAD_CACHE/src
mkdir -p "$BIN" "$SRC"

binary_path() {
  case $1 in
    etcd) echo "$BIN/etcd-$ETCD_VERSION" ;;
    kube-apiserver | kubectl | kubelet | kube-proxy | kube-scheduler | kube-controller-manager)
      echo "$BIN/$1-$KUBE_VERSION" ;;
    helm) echo "$BIN/helm-$HELM_VERSION" ;;
    lego) echo "$BIN/lego-$LEGO_VERSION" ;;
    *) echo "unknown tool: $1" >&2; return 2 ;;
  esac
}

# Every command built from the wrapper module below.
KUBE_COMMANDS=(kube-apiserver kubectl kubelet kube-proxy kube-scheduler kube-controller-manager)

# A wrapper module that requires k8s.io/kubernetes and points every staging module
# (its go.mod replaces them with ./staging/...) at the published v0.x.y release.
kube_module() {
  local dir=$SRC/kubernetes-$KUBE_VERSION
  if [[ ! -f $dir/.ready ]]; then
    say "preparing the kubernetes $KUBE_VERSION wrapper module"
    rm -rf "$dir"; mkdir -p "$dir"
    local staging=v0.${KUBE_VERSION#v1.}
    local kmod
    kmod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
      sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    local goline
    goline=$(grep -m1 '^go ' "$kmod")
    {
      echo "module kube-acme-dns.local/kubernetes-tools"
      echo
      echo "$goline"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      echo "replace ("
      sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\t\1 => \1 '"$staging"'#p' "$kmod"
      echo ")"
    } >"$dir/go.mod"
    touch "$dir/.ready"
  fi
  # A module made before the node's commands were added lacks their dependencies in
  # go.mod and go.sum; add whichever command is missing from its tool block.
  local missing=() c
  for c in "${KUBE_COMMANDS[@]}"; do
    grep -q "^\s*k8s.io/kubernetes/cmd/$c\$" "$dir/go.mod" || missing+=("k8s.io/kubernetes/cmd/$c@$KUBE_VERSION")
  done
  if ((${#missing[@]} > 0)); then
    say "adding to the wrapper module: ${missing[*]}"
    (cd "$dir" && go get -tool "${missing[@]}" >&2)
  fi
  echo "$dir"
}

build_kube() {
  local name=$1 out
  out=$(binary_path "$name")
  [[ -x $out ]] && return 0
  need_go
  local dir
  dir=$(kube_module)
  say "building $name $KUBE_VERSION (first time only; takes several minutes)"
  # Without these the binaries report v0.0.0-master, which `kubectl version` cannot parse
  # and which fails helm's kubeVersion checks; the values mirror hack/lib/version.sh.
  local minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  local ldflags="-s"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X '$pkg.gitVersion=$KUBE_VERSION' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$minor'"
    ldflags+=" -X '$pkg.gitTreeState=clean'"
  done
  (cd "$dir" && with_progress "$name" go build -trimpath -ldflags="$ldflags" -o "$out.tmp" "k8s.io/kubernetes/cmd/$name")
  mv "$out.tmp" "$out"
}

# etcd's own go.mod replaces its sibling modules with ../ paths, so `go install` refuses
# it; a wrapper module that requires the server module builds it.
build_etcd() {
  local out
  out=$(binary_path etcd)
  [[ -x $out ]] && return 0
  need_go
  local dir=$SRC/etcd-$ETCD_VERSION
  if [[ ! -f $dir/.ready ]]; then
    rm -rf "$dir"; mkdir -p "$dir"
    printf 'module kube-acme-dns.local/etcd-tools\n\ngo 1.24\n' >"$dir/go.mod"
    (cd "$dir" && go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
    touch "$dir/.ready"
  fi
  say "building etcd $ETCD_VERSION (first time only)"
  (cd "$dir" && with_progress etcd go build -trimpath -ldflags=-s -o "$out.tmp" go.etcd.io/etcd/server/v3)
  mv "$out.tmp" "$out"
}

build_helm() {
  local out
  out=$(binary_path helm)
  [[ -x $out ]] && return 0
  need_go
  say "building helm $HELM_VERSION (first time only)"
  local gobin=$SRC/helm-$HELM_VERSION
  mkdir -p "$gobin"
  with_progress helm env GOBIN="$gobin" go install -trimpath -ldflags=-s "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$gobin/helm" "$out"
}

# lego, the ACME client, as a client of the acme-dns API (tests/clients.rs). Built with
# lego's own build tags for a binary with one DNS provider (lego_dnslight, lego_dns_acmedns):
# its full provider set pulls in SDK versions the module proxy does not serve. Its logging
# library is held at v1.7.0 for the same reason (v5.6.0 asks for v1.7.1; same API).
LEGO_TAGS=lego_dnslight,lego_dns_acmedns
build_lego() {
  local out
  out=$(binary_path lego)
  [[ -x $out ]] && return 0
  need_go
  local dir=$SRC/lego-$LEGO_VERSION
  if [[ ! -f $dir/.ready ]]; then
    say "preparing the lego $LEGO_VERSION wrapper module"
    rm -rf "$dir"; mkdir -p "$dir"
    printf 'module kube-acme-dns.local/lego-tools\n\ngo 1.26\n' >"$dir/go.mod"
    (cd "$dir" && go mod edit -replace gitlab.com/greyxor/slogor=gitlab.com/greyxor/slogor@v1.7.0 &&
      GOFLAGS="${GOFLAGS:-} -tags=$LEGO_TAGS" go get -tool "github.com/go-acme/lego/v5@$LEGO_VERSION")
    touch "$dir/.ready"
  fi
  say "building lego $LEGO_VERSION (first time only)"
  # main.version is what `lego --version` prints.
  (cd "$dir" && with_progress lego go build -tags "$LEGO_TAGS" -trimpath \
    -ldflags="-s -X 'main.version=$LEGO_VERSION'" -o "$out.tmp" github.com/go-acme/lego/v5)
  mv "$out.tmp" "$out"
}

build() {
  case $1 in
    etcd) build_etcd ;;
    kube-apiserver | kubectl | kubelet | kube-proxy | kube-scheduler | kube-controller-manager)
      build_kube "$1" ;;
    node) for c in kubelet kube-proxy kube-scheduler kube-controller-manager; do build_kube "$c"; done ;;
    helm) build_helm ;;
    lego) build_lego ;;
    all) build_etcd; build_kube kube-apiserver; build_kube kubectl; build_helm; build_lego ;;
    *) echo "unknown tool: $1" >&2; exit 2 ;;
  esac
}

case ${1:-all} in
  path) binary_path "$2" ;;
  *) for t in "${@:-all}"; do build "$t"; done ;;
esac
