# acsgate as a container image: build with cargo, run on a small image as a non-root user.
#   docker build -t acsgate .
#   docker run --rm -p 8080:8080 -p 9464:9464 -e ACSGATE_LISTEN=0.0.0.0:8080 -e ACSGATE_ADMIN=0.0.0.0:9464 \
#       acsgate --upstream https://<resource>.communication.azure.com
# Set the admin address with ACSGATE_ADMIN (not --admin): the HEALTHCHECK reads the same variable.
# As a Kubernetes sidecar the app reaches it on 127.0.0.1:8080 (the default listener), and
# Prometheus scrapes the admin port, which must then listen on 0.0.0.0:9464.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked && strip target/release/acsgate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home acsgate
COPY --from=build /src/target/release/acsgate /usr/local/bin/acsgate
USER 10001
EXPOSE 8080 9464
# No curl in this image: the binary asks its own admin listener for /healthz (exit 0 or 1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/acsgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/acsgate"]
