# syntax=docker/dockerfile:1.7
# tessera-core, built against FoundationDB (the production store).
#
#   docker build -f deploy/docker/core.Dockerfile \
#     --build-arg FDB_CLIENTS_SHA256=<sha256 of foundationdb-clients_7.3.63-1_amd64.deb> \
#     -t tessera/core:0.1.0 .
#
# Runs as uid/gid 10001 with a read-only root filesystem. Writable paths (mount them:
# emptyDir on Kubernetes, a volume on Fly): /var/lib/tessera (the region's projections)
# and /tmp. Read-only inputs: /etc/tessera/core.toml (baked in, overridable by mounting
# another file), /etc/foundationdb/fdb.cluster (mounted from the cluster's ConfigMap).
# Secrets come from the environment (TESSERA_CORE__...); see deploy/README.md.

FROM rust:1.95.0-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# bindgen needs libclang for the FoundationDB bindings; curl fetches the client package.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libclang-dev=1:14.0-55.7~deb12u1 \
      curl=7.88.1-10+deb12u15 \
      ca-certificates=20250419~deb12u2 \
 && rm -rf /var/lib/apt/lists/*
# The FoundationDB client library (libfdb_c) links the core and must match the servers'
# release. The download is verified against a checksum the builder supplies (taken from
# the release page and checked by hand once per release; deploy/README.md): the build
# stops if it is missing or does not match.
ARG FDB_VERSION=7.3.63
ARG FDB_CLIENTS_SHA256=""
RUN if [ -z "${FDB_CLIENTS_SHA256}" ]; then \
      echo "FDB_CLIENTS_SHA256 is not set: pass --build-arg FDB_CLIENTS_SHA256=<sha256> (deploy/README.md)" >&2; exit 1; \
    fi \
 && curl -fsSL --proto '=https' --tlsv1.2 -o /tmp/fdb-clients.deb \
      "https://github.com/apple/foundationdb/releases/download/${FDB_VERSION}/foundationdb-clients_${FDB_VERSION}-1_amd64.deb" \
 && echo "${FDB_CLIENTS_SHA256}  /tmp/fdb-clients.deb" | sha256sum --check --strict - \
 && dpkg -i /tmp/fdb-clients.deb \
 && rm /tmp/fdb-clients.deb
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=tessera-core-target \
    cargo build --release --locked -p tessera-core --features fdb \
 && install -D -m 0755 target/release/tessera-core /out/tessera-core

FROM debian:12.12-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=20250419~deb12u2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tessera \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/tessera
COPY --from=build /usr/lib/libfdb_c.so /usr/lib/libfdb_c.so
COPY --from=build /out/tessera-core /usr/local/bin/tessera-core
COPY deploy/production/core.toml /etc/tessera/core.toml
USER 10001:10001
VOLUME ["/var/lib/tessera", "/tmp"]
EXPOSE 8100
ENTRYPOINT ["/usr/local/bin/tessera-core", "--config", "/etc/tessera/core.toml"]
