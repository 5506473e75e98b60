# bqforward container image: a drop-in for a fluentd aggregator image.
#
#   docker build -t bqforward .
#   docker run -p 24224:24224 -p 24231:24231 -e BIGQUERY_PROJECT=... -e BIGQUERY_JSON_KEY="$(cat key.json)" bqforward
#   docker run -v $PWD/fluent.conf:/fluentd/etc/fluent.conf bqforward     # as with fluentd's image
#
# The binary comes from one of two stages with the same output, /out (docs/deploy.md):
#   BQFORWARD_BUILD=source    (the default) compiles it in the official Rust image;
#   BQFORWARD_BUILD=prebuilt  takes target/image/ from the build context, laid out as /out by
#                             scripts/check-image.sh from `cargo build --release --locked -p
#                             bqforward` run outside with the same toolchain. CI builds this way
#                             (no registry serves a Rust image there), then runs the image.
# scripts/check-deploy.sh checks this file statically; scripts/check-image.sh builds and runs it.
ARG BQFORWARD_BUILD=source

# --- source: the release binary, with the command CI runs --------------------------------------
FROM rust:1.95-slim-trixie AS source
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
 && cargo build --release --locked -p bqforward \
 && mkdir -p /out/usr/local/bin /out/var/lib/bqforward/buffer /out/var/lib/bqforward/dead-letters \
 && cp target/release/bqforward /out/usr/local/bin/

# --- prebuilt: the same /out, from a binary built outside the image ----------------------------
FROM scratch AS prebuilt
COPY target/image/ /out/

# checkov:skip=CKV_DOCKER_7: not an image but one of the two stages above, by a build argument
FROM ${BQFORWARD_BUILD} AS build

# --- runtime: glibc and CA certificates, no shell, uid 65532 ----------------------------------
FROM gcr.io/distroless/cc-debian13:nonroot
COPY --from=build /out/usr/local/bin/bqforward /usr/local/bin/bqforward
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
