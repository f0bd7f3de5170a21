# Portcullis container: a multi-stage build, a small runtime image, a
# non-root user, the queue on a volume. See README "Container".
FROM rust:1.95-slim-bookworm AS build
# jemalloc (the allocator) is built from C with make, which the slim image lacks.
RUN apt-get update && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/portcullis --shell /usr/sbin/nologin portcullis \
 && install -d -o portcullis -g portcullis -m 0750 /var/lib/portcullis
COPY --from=build /src/target/release/portcullis /usr/bin/portcullis
COPY packaging/container.toml /etc/portcullis/portcullis.toml
USER portcullis
VOLUME ["/var/lib/portcullis"]
EXPOSE 2525 2587
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/bin/portcullis", "queue", "list", "--config", "/etc/portcullis/portcullis.toml"]
ENTRYPOINT ["/usr/bin/portcullis", "serve", "--config", "/etc/portcullis/portcullis.toml"]
