# syntax=docker/dockerfile:1.7
# tessera-edge: the wasmtime host with the WASM components and their Spin manifest.
#
#   docker build -f deploy/docker/edge.Dockerfile -t tessera/edge:0.1.0 .
#
# Runs as uid/gid 10001 with a read-only root filesystem. Writable paths:
# /var/cache/tessera (wasmtime's compile cache: compiled components are reused across
# restarts when it is a volume, recompiled in a few seconds when it is not) and /tmp.
# Component variables that are secrets come from SPIN_VARIABLE_<NAME>; see
# deploy/README.md.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip2
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=tessera-edge-target \
    cargo build --release --locked -p tessera-edge-host \
 && install -D -m 0755 target/release/tessera-edge /out/tessera-edge \
 && cargo xtask build-wasm --release \
 && mkdir -p /out/app/edge-components/components/target \
 && cp edge-components/spin.toml /out/app/edge-components/spin.toml \
 && cp -r edge-components/components/target/wasm /out/app/edge-components/components/target/wasm

FROM debian:12.12-slim AS runtime
# CA certificates for an OTLP collector or a router behind HTTPS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=20250419~deb12u2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tessera \
 && install -d -o 10001 -g 10001 -m 0750 /var/cache/tessera
COPY --from=build /out/tessera-edge /usr/local/bin/tessera-edge
COPY --from=build /out/app /app
COPY deploy/production/edge.toml /etc/tessera/edge.toml
USER 10001:10001
VOLUME ["/var/cache/tessera", "/tmp"]
EXPOSE 8080 9190
ENTRYPOINT ["/usr/local/bin/tessera-edge", "--config", "/etc/tessera/edge.toml"]
