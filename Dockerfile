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
#
# Build arguments (defaults give the image above):
#   RUST_VERSION   Rust toolchain of the builder image (1.95)
#   BUILDER_IMAGE  image the release build runs in (rust:${RUST_VERSION}-bookworm)
#   RUNTIME_BASE   base of the final image (gcr.io/distroless/cc-debian12:nonroot); it must provide
#                  the glibc the binary links against and CA certificates
#   BINARY         only with --target prebuilt: path, in the build context, of a binary built
#                  elsewhere, copied in instead of building (no builder image, no cargo):
#
#   cargo build --release --locked --bin cloudmap-mcp
#   mkdir -p .image && cp target/release/cloudmap-mcp .image/
#   docker build --target prebuilt --build-arg BINARY=.image/cloudmap-mcp -t cloudmap-mcp:0.1.0 .
#
# The binary must be built against a glibc no newer than the runtime base's (Debian 12: 2.36).
# tests/container/run.sh builds and runs the prebuilt target on a local base, as the test suite does.

ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io registry and the target directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cloudmap-mcp \
 && install -D -m 0755 target/release/cloudmap-mcp /out/cloudmap-mcp

# Everything of the final image but the binary, shared by both targets below.
FROM ${RUNTIME_BASE} AS runtime
COPY examples/registry.yaml /usr/share/cloudmap-mcp/examples/registry.yaml
USER 65532:65532
# 15010: gRPC (ADS for istiod, health, reflection); 15014: admin HTTP (/healthz /readyz /metrics /debug/*).
EXPOSE 15010 15014
ENTRYPOINT ["/usr/local/bin/cloudmap-mcp", "serve"]

# --target prebuilt: the binary comes from the build context (BINARY), nothing is compiled.
FROM runtime AS prebuilt
ARG BINARY=.image/cloudmap-mcp
COPY --chmod=0755 ${BINARY} /usr/local/bin/cloudmap-mcp

# Default target (last stage): the release build above.
FROM runtime AS release
COPY --from=builder /out/cloudmap-mcp /usr/local/bin/cloudmap-mcp
