# ocs-lifecycle container image (see docs/operations.md, "Docker").
# Build:  docker build -t ocs-lifecycle .
FROM rust:1-bookworm AS builder
WORKDIR /src
# protos compile with protox (pure Rust): no protoc needed; migrations are embedded.
COPY . .
RUN cargo build --release --locked --bin ocs-lifecycle \
    && install -m 0755 target/release/ocs-lifecycle /usr/local/bin/ocs-lifecycle

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ocs \
    && useradd --system --uid 10001 --gid ocs --home-dir /var/lib/ocs-lifecycle --shell /usr/sbin/nologin ocs \
    && install -d -o ocs -g ocs -m 0750 /var/lib/ocs-lifecycle
COPY --from=builder /usr/local/bin/ocs-lifecycle /usr/local/bin/ocs-lifecycle
USER ocs
WORKDIR /var/lib/ocs-lifecycle
# The default database, sqlite://ocs-lifecycle.db, is created here (the working directory);
# PostgreSQL: set OCS_DATABASE_URL. These two variables override the file's listen/http_addr.
VOLUME ["/var/lib/ocs-lifecycle"]
ENV OCS_LISTEN=0.0.0.0:50051 \
    OCS_HTTP_ADDR=0.0.0.0:9464
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ocs-lifecycle"]
CMD ["serve"]
