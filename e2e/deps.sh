#!/usr/bin/env bash
# Installs the Debian packages the tests and `make run` use, only those missing, so a
# second run does nothing. Needs root (or sudo) the first time.
set -euo pipefail

PACKAGES=(
  openssl          # PKI of the local control plane
  python3          # free-port picking, the aggregation probe server
  curl             # health checks
  bind9-dnsutils   # dig
  knot-dnsutils    # kdig
  knot             # the user's zone in delegation tests
  unbound          # the recursive resolver of the issuance test
  shellcheck       # the scripts' lint (tests/kind_flow.rs)
  postgresql       # an acme-dns PostgreSQL database for the import test (started by the test)
  # The real node (e2e/node.sh) and its images (e2e/image.sh)
  containerd runc containernetworking-plugins iptables conntrack
  buildah skopeo   # images built from scratch, no registry
  gcc libc6-dev    # the static pause binary
)

say() { printf '[deps] %s\n' "$*" >&2; }
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_debian_packages "${PACKAGES[@]}"
