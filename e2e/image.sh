#!/usr/bin/env bash
# Builds the image the chart's pods run on the local node (e2e/node.sh) and loads it into
# the node's containerd. Prints the image reference on stdout.
#
#   e2e/image.sh           cargo build --release, build the image (cached by the binary's
#                          hash, so a re-run only loads it), load it into the node
#   e2e/image.sh --no-load build only
#
# The Dockerfile stays what users build on a Docker host; this makes the same final
# stage, by the same recipe, without a Docker engine or a registry. That stage is
# distroless-style, from scratch: the binary, the few shared libraries it links (glibc
# and libgcc; TLS is rustls, so no OpenSSL) with the dynamic loader, CA certificates and
# /etc/passwd with the nonroot user 65532 -- no shell, no package manager. Here the
# libraries come from this Debian 12 machine (the Dockerfile's build stage is Debian 12
# too), found with ldd, so the build takes seconds instead of the minutes of a
# debootstrapped Debian root, and the image is about the size of the binary.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$E2E")
say() { printf '[image] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=e2e/lib.sh
source "$E2E/lib.sh"

load=true
case ${1:-} in
  "") ;;
  --no-load) load=false ;;
  *) echo "usage: $0 [--no-load]" >&2; exit 2 ;;
esac

REPOSITORY=kad.local/kube-acme-dns

# Run from `cargo test`, the environment holds the test crate's CARGO_PKG_* and
# CARGO_MANIFEST_* variables; ring's build script asks to rerun when those change, which
# would rebuild a good part of the release tree each time. Build with a shell's environment.
for v in $(compgen -e); do
  case $v in
    CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_* | CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR | CARGO_RUSTC_CURRENT_DIR) unset "$v" ;;
  esac
done
say "cargo build --release (first build of this checkout takes many minutes)"
(cd "$REPO" && with_progress "kube-acme-dns (release)" cargo build --release --locked --quiet)
bin=$REPO/target/release/kube-acme-dns

# The binary and this recipe decide the contents.
hash=$(cat "$bin" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
ref=$REPOSITORY:$hash
archive=$KAD_CACHE/images/kube-acme-dns-$hash.tar

if [[ -f $archive ]]; then
  say "$ref already built ($archive)"
else
  say "building $ref"
  mkdir -p "$(dirname "$archive")"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  chmod 0755 "$root" # it becomes the image's /, which user 65532 must traverse
  install -D -m 0755 "$bin" "$root/usr/local/bin/kube-acme-dns"
  # Every library the binary loads, and the dynamic loader, at the paths it names them.
  while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib" # the loader must be executable
  done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
  [[ -n $(find "$root" -name 'ld-linux*' -print -quit) ]] || die "ldd names no dynamic loader for $bin"
  mkdir -p "$root/etc/ssl/certs"
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  fi
  # Users root, and nonroot with uid/gid 65532 (the conventional distroless nonroot).
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$root/etc/group"
  build_oci_archive "$ref" "$archive" "$root" \
    --user 65532:65532 \
    --entrypoint '["/usr/local/bin/kube-acme-dns"]' \
    --cmd '["serve"]' \
    --port 5353/udp --port 5353/tcp --port 8443/tcp --port 8080/tcp --port 9090/tcp
  say "size: $(du -sh --apparent-size "$root" | cut -f1) unpacked, $(du -h --apparent-size "$archive" | cut -f1) archive"
  # Keep this archive and the two before it; older builds are never loaded again.
  find "$(dirname "$archive")" -maxdepth 1 -name 'kube-acme-dns-*.tar' -printf '%T@ %p\n' |
    sort -rn | tail -n +4 | cut -d' ' -f2- | xargs -r rm -f --
fi

if $load; then
  "$E2E/node.sh" load "$archive"
  say "loaded $ref into the node's containerd"
fi
echo "$ref"
