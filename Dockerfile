# bqforward container image: a drop-in for a fluentd aggregator image.
#
#   docker build -t bqforward .
#   docker run -p 24224:24224 -p 24231:24231 -e BIGQUERY_PROJECT=... -e BIGQUERY_JSON_KEY="$(cat key.json)" bqforward
#   docker run -v $PWD/fluent.conf:/fluentd/etc/fluent.conf bqforward     # as with fluentd's image
#
# No Docker engine runs in this repository's CI: scripts/check-deploy.sh checks this file
# statically (every COPY source, the build command against CI's, the CLI subcommands used,
# hadolint, checkov).

# --- build: the release binary, with the command CI runs --------------------------------------
FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bq-storage-proto ./bq-storage-proto
COPY emulator ./emulator
COPY loadgen ./loadgen
COPY benches ./benches
COPY scripts/build-deps.sh ./scripts/
# ISA-L's build tools, as CI installs them; the runtime image has no shell, so its writable
# directories are made here.
RUN scripts/build-deps.sh \
 && cargo build --release --locked \
 && mkdir -p /out/var/lib/bqforward/buffer /out/var/lib/bqforward/dead-letters

# --- runtime: glibc and CA certificates, no shell, uid 65532 ----------------------------------
FROM gcr.io/distroless/cc-debian13:nonroot
COPY --from=build /src/target/release/bqforward /usr/local/bin/bqforward
COPY deploy/config/bqforward.conf /etc/bqforward/fluent.conf
COPY deploy/config/firelens.conf /etc/bqforward/firelens.conf
COPY deploy/docker/fluent.conf /fluentd/etc/fluent.conf
COPY --from=build --chown=65532:65532 /out/var/lib/bqforward /var/lib/bqforward
USER 65532:65532
# fluentd's image reads /fluentd/etc/fluent.conf (and ECS FireLens mounts its config there);
# that file includes /etc/bqforward/fluent.conf. `-c FILE` or BQFORWARD_CONFIG override both.
ENV BQFORWARD_CONFIG=/fluentd/etc/fluent.conf \
    BQFORWARD_CONFIG_DIR=/etc/bqforward
# The file buffer and dead letters. On ECS, mount the task volume at this same path: the data
# plane then copies the directory with its owner (65532) into the volume.
VOLUME ["/var/lib/bqforward"]
# 24224 Forward protocol (TCP, and UDP heartbeats); 24231 metrics, /healthz, /readyz.
EXPOSE 24224 24224/udp 24231
HEALTHCHECK --interval=10s --timeout=6s --start-period=15s --retries=3 CMD ["bqforward", "health"]
# SIGTERM drains the buffers within --shutdown-timeout (20s); keep the orchestrator's stop
# timeout above it (docker stop -t 30, ECS stopTimeout 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["bqforward"]
CMD ["run"]
