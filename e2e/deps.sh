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
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "[deps] installing Debian packages: ${missing[*]}" >&2
SUDO=
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null || { echo "[deps] need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[deps] done" >&2
