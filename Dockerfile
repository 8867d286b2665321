# Multi-stage build: compile in the Rust image (Debian 12), then a final image from scratch
# holding only the binary, the libraries it links (glibc and libgcc; TLS is rustls, no
# OpenSSL) with the dynamic loader, CA certificates, and /etc/passwd with the nonroot user
# 65532: no shell, no package manager (distroless-style). e2e/image.sh builds the same
# final stage without Docker for the local node, by the same recipe.
# The pod spec in the chart adds readOnlyRootFilesystem and drops all capabilities;
# DNS listens on 5353, so no NET_BIND_SERVICE is needed.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not refetch and rebuild every crate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked
RUN set -eu; root=/rootfs; bin=target/release/kube-acme-dns; \
    install -D -m 0755 "$bin" "$root/usr/local/bin/kube-acme-dns"; \
    for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do \
      install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"; \
    done; \
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"; \
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
      'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$root/etc/passwd"; \
    printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' > "$root/etc/group"; \
    chmod 0755 "$root"

FROM scratch
COPY --from=build /rootfs /
USER 65532:65532
EXPOSE 5353/udp 5353/tcp 8443/tcp 8080/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/kube-acme-dns"]
CMD ["serve"]
