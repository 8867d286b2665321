# Multi-stage build: compile in the Rust image (Debian 12), run from distroless's cc image
# for Debian 12 as its nonroot user (65532): the binary needs only glibc and libgcc (TLS is
# rustls, no OpenSSL), and the final image has no shell or package manager. e2e/image.sh
# builds the same final stage without Docker for the local node.
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

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kube-acme-dns /usr/local/bin/kube-acme-dns
USER 65532:65532
EXPOSE 5353/udp 5353/tcp 8443/tcp 8080/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/kube-acme-dns"]
CMD ["serve"]
