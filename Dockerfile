# syntax=docker/dockerfile:1
# Build: the same release binary `cargo build --release` makes locally.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p m365-ingest \
 && cp target/release/m365-ingest /m365-ingest

# Run: a small Debian with CA certificates, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=20230311* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/m365-ingest --create-home m365
COPY --from=build /m365-ingest /usr/local/bin/m365-ingest
COPY config/m365-ingest.example.toml /etc/m365-ingest/m365-ingest.toml
USER 10001
WORKDIR /var/lib/m365-ingest
# glibc's malloc, tuned as the binary tunes it when these are unset (src/allocator.rs; it runs
# itself again once): two arenas, and fixed thresholds so freed page buffers go back to the
# system (docs/benchmarks.md, issue 12). Setting them here spares that step.
ENV MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=1048576 \
    MALLOC_TRIM_THRESHOLD_=4194304 \
    M365_INGEST_CONFIG=/etc/m365-ingest/m365-ingest.toml \
    M365_INGEST__SERVER__LISTEN=0.0.0.0:8080 \
    M365_INGEST__STORE__URL=sqlite:///var/lib/m365-ingest/m365-ingest.db
VOLUME ["/var/lib/m365-ingest"]
EXPOSE 8080
# The image has no curl: the binary probes itself. /healthz: the process serves (readiness, which
# depends on Microsoft and Dropzone, is for orchestrators: `health --url …/readyz`).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/m365-ingest", "health", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/m365-ingest"]
CMD ["run"]
