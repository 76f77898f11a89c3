# acsgate as a container image: build with cargo, run on a small image as a non-root user.
#   docker build -t acsgate .
#   docker run --rm -p 8080:8080 -p 9464:9464 -e ACSGATE_LISTEN=0.0.0.0:8080 -e ACSGATE_ADMIN=0.0.0.0:9464 \
#       acsgate --upstream https://<resource>.communication.azure.com
# Set the admin address with ACSGATE_ADMIN (not --admin): the HEALTHCHECK reads the same variable.
# As a Kubernetes sidecar the app reaches it on 127.0.0.1:8080 (the default listener), and
# Prometheus scrapes the admin port, which must then listen on 0.0.0.0:9464.
#
# The binary is built with profile-guided optimisation (scripts/pgo-build.sh --training demo):
# an instrumented build runs `acsgate demo` (the gateway in front of its simulated ACS, on the
# build container's loopback) and a second build uses the counts, for about a quarter fewer
# instructions per proxied request (README "Performance"). `--build-arg PGO=0` builds the plain
# release instead, in half the time.

FROM rust:1-bookworm AS build
ARG PGO=1
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY scripts/pgo-build.sh ./scripts/
COPY bench/lib.sh ./bench/
# rustup's llvm-tools: the llvm-profdata of this rustc's LLVM, which merges the counts.
RUN if [ "$PGO" = 1 ]; then \
        rustup component add llvm-tools \
        && scripts/pgo-build.sh --training demo \
        && cp target/pgo/acsgate target/acsgate; \
    else \
        cargo build --release --locked && cp target/release/acsgate target/acsgate; \
    fi \
    && strip target/acsgate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home acsgate
COPY --from=build /src/target/acsgate /usr/local/bin/acsgate
USER 10001
EXPOSE 8080 9464
# No curl in this image: the binary asks its own admin listener for /healthz (exit 0 or 1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/acsgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/acsgate"]
