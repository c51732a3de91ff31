# syntax=docker/dockerfile:1.7
# tessera-router (and the `tessera` operator CLI beside it).
#
#   docker build -f deploy/docker/router.Dockerfile -t tessera/router:0.1.0 .
#
# Runs as uid/gid 10001 with a read-only root filesystem. Writable paths: /var/lib/tessera
# (the drain/restore state file) and /tmp. Secrets and per-PoP settings come from the
# environment (TESSERA_ROUTER__...); see deploy/README.md.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=tessera-router-target \
    cargo build --release --locked -p tessera-region-router -p tessera-cli \
 && install -D -m 0755 target/release/tessera-router /out/tessera-router \
 && install -D -m 0755 target/release/tessera /out/tessera

FROM debian:12.12-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=20250419~deb12u2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tessera \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/tessera
COPY --from=build /out/tessera-router /out/tessera /usr/local/bin/
COPY deploy/production/router.toml /etc/tessera/router.toml
USER 10001:10001
VOLUME ["/var/lib/tessera", "/tmp"]
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/tessera-router", "--config", "/etc/tessera/router.toml"]
