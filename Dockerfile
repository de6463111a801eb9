# syntax=docker/dockerfile:1
#
# cloudmap-mcp container image: a release build on the official Rust image, run on distroless/cc
# (glibc, CA certificates, no shell) as the non-root user 65532.
#
#   docker build -t cloudmap-mcp:0.1.0 .
#   docker run --rm -p 15010:15010 -p 15014:15014 cloudmap-mcp:0.1.0 \
#     --registry-file /usr/share/cloudmap-mcp/examples/registry.yaml
#
# No protoc is needed (build.rs compiles the .proto files with protox).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io registry and the target directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cloudmap-mcp \
 && install -D -m 0755 target/release/cloudmap-mcp /out/cloudmap-mcp

# Same Debian release as the builder, so the glibc the binary links against is present.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/cloudmap-mcp /usr/local/bin/cloudmap-mcp
COPY examples/registry.yaml /usr/share/cloudmap-mcp/examples/registry.yaml
USER 65532:65532
# 15010: gRPC (ADS for istiod, health, reflection); 15014: admin HTTP (/healthz /readyz /metrics /debug/*).
EXPOSE 15010 15014
ENTRYPOINT ["/usr/local/bin/cloudmap-mcp", "serve"]
